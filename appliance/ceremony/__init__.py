"""Scripted key ceremonies: strict YAML scripts, plan/dry-run, execution, signed transcripts."""
