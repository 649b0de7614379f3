"""The FIPS-style mode: which mode this installation is in, the self-tests that gate every
process, the sealed manifest of the installed code, and what an auditor is shown.

It sits below the runtime (every process checks its mode and runs its self-tests before it
uses a key) and above the audit log, the token and the database it checks.
"""
