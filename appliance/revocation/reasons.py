"""RFC 5280 revocation reasons the appliance accepts.

``certificateHold`` is refused: a hold is reversible, and a CA that can un-revoke
makes every relying party's cached "revoked" answer wrong. ``removeFromCRL``
only exists in delta CRLs.
"""

from __future__ import annotations

from cryptography import x509

from appliance.errors import ApplianceError

CODES = {
    0: "unspecified", 1: "keyCompromise", 2: "cACompromise", 3: "affiliationChanged",
    4: "superseded", 5: "cessationOfOperation", 9: "privilegeWithdrawn", 10: "aACompromise",
}
BY_NAME = {name.lower(): name for name in CODES.values()}
FLAGS = {
    "keyCompromise": x509.ReasonFlags.key_compromise,
    "cACompromise": x509.ReasonFlags.ca_compromise,
    "affiliationChanged": x509.ReasonFlags.affiliation_changed,
    "superseded": x509.ReasonFlags.superseded,
    "cessationOfOperation": x509.ReasonFlags.cessation_of_operation,
    "privilegeWithdrawn": x509.ReasonFlags.privilege_withdrawn,
    "aACompromise": x509.ReasonFlags.aa_compromise,
    "unspecified": x509.ReasonFlags.unspecified,
}


class ReasonError(ApplianceError):
    code = "bad_request"
    acme_type = "badRevocationReason"


def parse(value: str | int) -> str:
    """The canonical reason name for a code or a (case-insensitive) name."""
    if isinstance(value, str) and len(value) > 64:
        raise ReasonError("unknown revocation reason (longer than any reason name)")
    if isinstance(value, int) or (isinstance(value, str) and value.isascii()
                                  and value.isdigit()):
        code = int(value)
        if code == 6:
            raise ReasonError("certificateHold is not supported: revocation is final")
        if code not in CODES:
            raise ReasonError(f"unknown revocation reason code {code}")
        return CODES[code]
    name = BY_NAME.get(str(value).lower())
    if name is None:
        if str(value).lower() == "certificatehold":
            raise ReasonError("certificateHold is not supported: revocation is final")
        known = ", ".join(CODES.values())
        raise ReasonError(f"unknown revocation reason {value!r}; one of {known}")
    return name
