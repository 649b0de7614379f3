"""Audit the requests a mode (FIPS) refused for their algorithm, before any other work.

The issuance pipeline audits its own refusals (``certificate.refused``); what is refused
earlier, while a request is authenticated (an ACME account key or JWS algorithm, an EAB MAC,
a provisioner token's algorithm), is audited here as ``algorithm.refused`` with the entry
point and the reason, so an auditor counts every refusal by reason (issue 14). Only
refusals :func:`appliance.x509.algorithms.is_not_approved` says a mode made are written: the
default mode's answers stay as they were (no audit row per malformed request).
"""

from __future__ import annotations

from flask import current_app, request

from appliance import logs
from appliance.audit.log import Actor
from appliance.errors import ApplianceError
from appliance.x509 import algorithms

log = logs.get("web.refusals")
EVENT = "algorithm.refused"


def audit(exc: BaseException, entry: str) -> None:
    """Write ``algorithm.refused`` for ``exc`` if a mode refused it; a failed write is
    logged, and the client still gets its refusal (nothing was changed either way)."""
    if not algorithms.is_not_approved(exc):
        return
    app = current_app.extensions.get("appliance")
    if app is None:
        return
    try:
        with app.db.transaction() as db:
            app.audit_log().append(
                db, EVENT, Actor(f"{entry}:{request.remote_addr or '-'}", "client"),
                outcome="denied", object_ids={"path": request.path[:200]},
                details={"entry": entry, "mode": algorithms.current().mode,
                         "reason": str(exc)[:1000]})
    except (ApplianceError, OSError) as fault:
        log.error("could not audit a refused algorithm", extra={"fault": str(fault)})
