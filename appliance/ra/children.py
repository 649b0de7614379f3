"""Who is calling ``/1.0/ra/*``: the registered RA directly below this node.

Used on the CA and on an RA node (for its own children). The TLS handshake has verified
the client certificate against this node's roots; here it must be the credential of an
enabled registered ``ra`` provisioner whose parents are enabled too (matched by its key,
never by a name it claims), and the hop assertion the child sent must be that RA's, verify
with that key, and be for this operation on this very subject (CSR, certificate or serial
digest). Refusals are audited as failed logins.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from cryptography import x509

from appliance.errors import ApplianceError
from appliance.provisioners.authorize import audit_failure
from appliance.ra import assertion
from appliance.ra import registry as reg
from appliance.ra.errors import HopAssertionError
from appliance.runtime import Appliance


@dataclass(frozen=True)
class ChildHop:
    """The direct child RA, authenticated, and its verified hop assertion."""

    row: reg.RaEntry
    hop: assertion.Hop
    certificate: x509.Certificate  # the credential it presented (mTLS)


def authenticate_child(app: Appliance, peer_der: bytes | None, token: object, op: str,
                       subject_sha256: str) -> ChildHop:
    try:
        return _authenticate(app, peer_der, token, op, subject_sha256)
    except (reg.RaUnknown, reg.RaRefused, HopAssertionError) as exc:
        claimed = "?"
        with contextlib.suppress(ApplianceError):
            claimed = f"ra:{assertion.peek(token).iss}"
        audit_failure(app, f"/1.0/ra/{op}", claimed, exc)
        raise


def _authenticate(app: Appliance, peer_der: bytes | None, token: object, op: str,
                  subject_sha256: str) -> ChildHop:
    if not peer_der:
        raise reg.RaUnknown("RA requests need the RA's credential certificate (mutual TLS)")
    try:
        cert = x509.load_der_x509_certificate(peer_der)
        spki = reg.spki_digest(cert.public_key())
    except ValueError:
        raise reg.RaUnknown("the client certificate cannot be read") from None
    claimed = assertion.peek(token)  # bounded and typed before anything is looked up
    with app.db.read() as db:
        entry = reg.by_spki(db, spki)
        if entry is None:
            raise reg.RaUnknown("the client certificate is not the credential of a "
                                "registered RA")
        if claimed.iss != entry.name:
            raise HopAssertionError(f"the hop assertion is by {claimed.iss!r}, but the "
                                    f"client certificate is RA {entry.name}'s")
        reg.require_enabled(db, entry)
        presented = reg.credential_state_of(db, cert)
    if presented == "unknown":
        if not _is_ra_node(app):
            # The CA issued every RA credential it accepts: one it has no record of fails.
            raise reg.RaRefused(f"RA {entry.name}'s credential certificate was not issued "
                                "here")
    elif presented != "issued":
        raise reg.RaRefused(f"RA {entry.name}'s credential certificate is {presented}")
    hop = assertion.verify(token, cert.public_key(), iss=entry.name, op=op,
                           subject_sha256=subject_sha256)
    reg.touch(app, entry, op)
    return ChildHop(entry, hop, cert)


def _is_ra_node(app: Appliance) -> bool:
    return getattr(app.settings.config, "role", "online") == "ra"

