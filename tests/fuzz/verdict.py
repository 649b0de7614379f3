"""What a fuzz target may end with: a refusal the appliance means, answered as a 4xx."""

from __future__ import annotations

from appliance.acme.problems import AcmeProblem
from appliance.errors import ApplianceError
from appliance.web.errors import status_of


def expected(exc: BaseException) -> bool:
    """True for the appliance's own clear errors that are answered below 500."""
    if isinstance(exc, AcmeProblem):
        return exc.status < 500
    if isinstance(exc, ApplianceError):
        return status_of(exc) < 500
    return False


def guarded(call: object) -> None:
    """Run ``call()``; swallow expected refusals, re-raise anything else (a finding)."""
    try:
        call()  # type: ignore[operator]
    except Exception as exc:
        if not expected(exc):
            raise
