"""Error types shared by every layer.

Each error carries a stable ``code`` so the CLI, the API and the audit log
can report the same failure the same way, and callers can branch on it
without parsing messages.

Each error also says, once, whose failure it is and how a protocol answers it, so the REST
error handler and the ACME problem mapper read the same class attributes instead of each
keeping its own list of exception types:

- ``server_fault``: the appliance's side failed (token, database, audit log, configuration);
  the request may succeed later unchanged. Such an answer is a 5xx with ``Retry-After``, its
  text is logged rather than sent (it can name token labels or SQL) unless ``public_detail``
  says the message was written for the client, and an ACME order it interrupted stays
  retryable.
- ``status``: the HTTP status of the REST answer.
- ``acme_type``: the RFC 8555 problem type (without the URN prefix) of the ACME answer.
"""

from __future__ import annotations


class ApplianceError(Exception):
    """Base of every error the appliance reports to a user: by default the client's."""

    code = "appliance_error"
    server_fault = False
    status = 400
    acme_type = "malformed"
    public_detail = True
    # The request was neither refused nor done, and can be completed later unchanged by
    # this node itself (an RA whose upstream is away): an ACME order then stays processing.
    deferred = False


class ServerFault(ApplianceError):
    """Base of the failures on the appliance's side: fail closed, answer 503, retry later."""

    code = "server_fault"
    server_fault = True
    status = 503
    acme_type = "serverInternal"
    public_detail = False


class ConfigError(ServerFault):
    """The configuration or an HSM profile is missing or invalid."""

    code = "config_error"


class HsmError(ServerFault):
    """A token operation failed; nothing was signed or created."""

    code = "hsm_error"


class HsmLoginError(HsmError):
    """The token refused the PIN; the pool stops so the PIN is not retried into a lockout."""

    code = "hsm_login_failed"


class HsmUnavailableError(HsmError):
    """The token stayed unreachable after the bounded retries."""

    code = "hsm_unavailable"
    # False when the token itself is not in doubt (every session busy; sessions that broke
    # one by one under the operation): the pool then does not re-initialise the module.
    token_gone: bool = True


class KeyNotFoundError(HsmError):
    """No key, or more than one key, matched a lookup."""

    code = "key_not_found"


class KeyExistsError(HsmError):
    """An object with the requested label already exists in the token."""

    code = "key_exists"


class KeyPolicyError(HsmError):
    """A key does not have the attributes or shape the appliance requires."""

    code = "key_policy"


class SignatureCheckError(HsmError):
    """A signature produced by the token did not verify; it is never released."""

    code = "signature_check_failed"


class SelfTestError(ServerFault):
    """A known-answer or token self-test failed."""

    code = "selftest_failed"


class AuditError(ServerFault):
    """The audit log could not be written or does not verify: no audit row, no change, so
    the request failed on our side (never the client's 400)."""

    code = "audit_error"


class DatabaseError(ServerFault):
    """The database refused or failed a transaction; nothing of it was kept."""

    code = "database_error"


class InputError(ApplianceError):
    """A client sent a value that cannot be read (malformed, out of range, too large): a 400
    that names the field, raised before anything is reserved, signed or stored."""

    code = "bad_request"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
