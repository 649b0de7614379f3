"""The errors of the RA room: an upstream that cannot be reached, an upstream that refused,
and a hop assertion that does not verify.

They follow ``appliance.errors``: the class says whose fault it is and how a protocol
answers, so the REST handler and the ACME mapper need no list of their own. A refusal from
upstream keeps the upstream's status, code and refusing ``hop`` so that a chain of RAs
passes it down unchanged and the requester learns which node said no.
"""

from __future__ import annotations

from appliance.errors import ApplianceError, ServerFault

# ACME problem type of an upstream refusal, by its REST status: the upstream's own class
# decided the status, so the same words reach the ACME client as a direct request gets.
_ACME_TYPE_OF_STATUS = {401: "unauthorized", 403: "rejectedIdentifier", 404: "malformed"}
MAX_FIELD_CHARS = 2048


def _bounded(text: object, default: str) -> str:
    """An upstream's string field as we repeat it: a string, at most MAX_FIELD_CHARS."""
    if not isinstance(text, str) or not text:
        return default
    return text[:MAX_FIELD_CHARS]


class UpstreamUnavailable(ServerFault):
    """The upstream (CA or parent RA) could not be asked: connection refused, timeout, TLS
    failure, a 5xx, an unreadable answer. Nothing was issued at this hop; the same request
    may succeed later, so it is a 503 with Retry-After and an ACME order stays retryable.
    The message is written for the client (it names no secret, only what failed)."""

    code = "upstream_unavailable"
    status = 503
    public_detail = True

    def __init__(self, message: str, *, hop: str | None = None,
                 retry_after: str | None = None) -> None:
        super().__init__(message)
        self.hop = hop  # the node that reported itself unavailable, when it said so
        self.retry_after = retry_after  # the upstream's Retry-After, when it sent one


class UpstreamRefused(ApplianceError):
    """The upstream answered 4xx: the request itself was refused (policy, names, validity,
    authentication). Status, code, message and the refusing ``hop`` are the upstream's,
    passed down unchanged."""

    code = "upstream_refused"
    status = 400
    acme_type = "badCSR"

    def __init__(self, status: int, code: str, message: str, hop: str | None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.hop = hop
        self.acme_type = _ACME_TYPE_OF_STATUS.get(status, "badCSR")

    @classmethod
    def from_reply(cls, status: int, body: object) -> UpstreamRefused:
        """The refusal an upstream's JSON error body describes (``{"status", "error" or
        "code", "message", "hop"}``); a body that is not one still yields a refusal."""
        doc = body if isinstance(body, dict) else {}
        code = _bounded(doc.get("code") or doc.get("error"), "upstream_refused")
        message = _bounded(doc.get("message"), f"refused upstream (HTTP {status})")
        hop = doc.get("hop")
        return cls(status, code, message, _bounded(hop, "") or None)


class HopAssertionError(ApplianceError):
    """A hop assertion is malformed, too large, too deep, expired, signed by another key,
    or says something other than the request it came with: the child is not authenticated."""

    code = "ra_assertion_invalid"
    status = 401
    acme_type = "unauthorized"
