"""Revocation: revoking certificates and publishing CRLs."""
