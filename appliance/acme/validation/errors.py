"""The one error every validator raises, so the ACME layer needs to know only this.

The ``problem`` suffix is decided where the failure is understood (a refused
connection, an NXDOMAIN, a wrong body), not guessed later from an exception type.
"""

from __future__ import annotations


class ValidationError(Exception):
    """A challenge could not be validated.

    ``problem`` is the RFC 8555 §6.7 error type suffix ("connection", "dns",
    "unauthorized", "incorrectResponse", "tls" or "malformed") so the caller can build
    ``urn:ietf:params:acme:error:<problem>``; ``str(exc)`` names what was tried, because
    the applicant reads it to fix their setup.
    """

    def __init__(self, problem: str, message: str) -> None:
        super().__init__(message)
        self.problem = problem
        self.message = message

