"""The CA's check of the whole RA path a request came by.

The direct child was authenticated by mTLS and its assertion (``children``). Each
assertion carries the one of the hop below it verbatim (``below``); here every lower
assertion must verify with the credential key of the RA registered at the CA under the hop
above it (``ra_parent``), be for the same operation, the same subject digest and the same
names, and every hop's row must be enabled (with every RA above it), its current
credential issued by this CA, not revoked and not expired. So a node in the middle cannot
invent a grandchild, move a request to another one, or speak for an RA cut off at the CA.
"""

from __future__ import annotations

from dataclasses import dataclass

from appliance.ra import assertion
from appliance.ra import registry as reg
from appliance.ra.children import ChildHop
from appliance.ra.errors import HopAssertionError
from appliance.runtime import Appliance


@dataclass(frozen=True)
class RaPath:
    """A verified path, bottom hop (the RA that authenticated the requester) first."""

    hops: list[assertion.Hop]
    rows: list[reg.RaEntry]

    @property
    def names(self) -> list[str]:
        return [r.name for r in self.rows]

    @property
    def bottom(self) -> assertion.Hop:
        return self.hops[0]

    @property
    def direct(self) -> reg.RaEntry:
        """The CA's direct child: the provisioner whose claims the request is issued under."""
        return self.rows[-1]

    def arrow(self) -> str:
        """``edge-2 → edge-1`` (bottom first), as the requester and ``cert show`` print it."""
        return " → ".join(self.names)


def verify_path(app: Appliance, child: ChildHop) -> RaPath:
    top = child.hop
    rows, hops = [child.row], [top]
    with app.db.read() as db:
        if child.row.parent is not None:
            raise reg.RaRefused(f"RA {child.row.name} is registered under RA "
                                f"{child.row.parent}: its requests must come through it")
        _check_hop(db, child.row)
        current = top
        while current.below is not None:
            if len(hops) >= assertion.MAX_DEPTH:
                raise HopAssertionError(f"the RA path is deeper than {assertion.MAX_DEPTH} "
                                        "hops")
            claimed = assertion.peek(current.below)
            entry = reg.by_name(db, claimed.iss)
            if entry is None:
                raise reg.RaRefused(f"RA {claimed.iss} (below {rows[-1].name}) is not "
                                    "registered at the CA")
            if entry.parent != rows[-1].name:
                where = (f"under RA {entry.parent}" if entry.parent
                         else "directly at the CA")
                raise reg.RaRefused(f"RA {entry.name} is registered {where}, not under "
                                    f"RA {rows[-1].name}")
            if any(r.id == entry.id for r in rows):
                raise HopAssertionError(f"RA {entry.name} appears twice on the path")
            _check_hop(db, entry)
            assert entry.certificate is not None  # _check_hop: its credential is issued
            lower = assertion.verify(current.below, entry.certificate.public_key(),
                                     iss=entry.name, op=top.op,
                                     subject_sha256=top.subject_sha256)
            if lower.names != top.names:
                raise HopAssertionError(f"RA {rows[-1].name} forwarded other names than "
                                        f"RA {entry.name} asserted")
            if top.op == "register" and lower.register != top.register:
                raise HopAssertionError(f"RA {rows[-1].name} forwarded another "
                                        f"registration than RA {entry.name} asserted")
            rows.append(entry)
            hops.append(lower)
            current = lower
    return RaPath(hops=list(reversed(hops)), rows=list(reversed(rows)))


def _check_hop(db: object, entry: reg.RaEntry) -> None:
    """This hop may act: it and the RAs above it enabled; its current credential issued by
    this CA, not revoked, not expired."""
    reg.require_enabled(db, entry)
    state = reg.credential_state(db, entry)
    if state == "unknown":
        raise reg.RaRefused(f"RA {entry.name}'s credential was not issued by this CA")
    if state != "issued":
        raise reg.RaRefused(f"RA {entry.name}'s credential is {state}")
