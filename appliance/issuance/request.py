"""What the issuance pipeline takes: its input contract, defined beside it.

Every entry point (REST sign and renew, ACME finalize, the API's own TLS certificate,
an RA forward) turns its credential into a ``ProvisionerContext`` and a
``SignRequest``; the pipeline reads nothing of the provisioner layer beyond these.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cryptography import x509

from appliance import durations, policy
from appliance.errors import ApplianceError

MAX_CERT_LIFETIME = 100 * 366 * 86400  # seconds; any provisioner's maximum is far below


class TokenError(ApplianceError):
    """A credential that does not authenticate (401). Defined here, beside the pipeline's
    input, because the pipeline itself refuses a one-time token already spent: the spend is
    written in the same transaction as the serial reservation (``TokenSpend``).
    ``appliance.provisioners.tokens.TokenError`` is this class."""

    code = "unauthorized"
    status = 401
    acme_type = "unauthorized"


@dataclass(frozen=True)
class TokenSpend:
    """A verified one-time token still to be spent (``used_tokens``): by the transaction
    that reserves the serial if the request gets that far, or by the one that audits the
    refusal if the pipeline refuses it. Either way the first use that reaches a decision
    spends it, and a second use is refused (``TokenError`` "token already used") in every
    worker and node, reserving nothing."""

    jti: str  # as stored: "<provisioner name>:<jti>"
    provisioner_id: int
    expires_at: datetime
    # Now and then the spending transaction also forgets ids spent by tokens that expired
    # before this (the provisioner layer decides when, and the margin).
    prune_before: datetime | None = None


@dataclass(frozen=True)
class EffectiveClaims:
    min_duration: int
    max_duration: int
    default_duration: int
    disable_renewal: bool
    allow_renewal_after_expiry: bool
    renewal_grace: int | None  # None: unlimited

    def as_dict(self) -> dict[str, object]:
        def fmt(v: int | None) -> str | None:
            return durations.format_seconds(v) if v is not None else None

        return {"min_duration": fmt(self.min_duration), "max_duration": fmt(self.max_duration),
                "default_duration": fmt(self.default_duration),
                "disable_renewal": self.disable_renewal,
                "allow_renewal_after_expiry": self.allow_renewal_after_expiry,
                "renewal_grace": fmt(self.renewal_grace)}


@dataclass(frozen=True)
class ProvisionerContext:
    """Who may ask under which provisioner: what a credential was turned into (DESIGN.md's
    ``Authorization``). Provisioners build it; the pipeline trusts nothing else."""

    id: int | None  # None: the appliance itself (its own TLS certificate)
    name: str
    type: str
    claims: EffectiveClaims
    authority_id: int
    # What the pipeline reads of the provisioner's settings.
    template: str | None = None  # None: the built-in tls-server template
    require_inventory: bool = False
    allow_template_data: bool = False


@dataclass
class SignRequest:
    # A CSR, or for a renewal the certificate being renewed (its key, subject and names).
    csr: x509.CertificateSigningRequest | x509.Certificate
    provisioner: ProvisionerContext
    requester: str
    credential_names: list[str] | None  # names the credential authorizes; must equal the CSR's
    token_claims: dict[str, Any] = field(default_factory=dict)
    not_before: datetime | None = None
    not_after: datetime | None = None
    lifetime: int | None = None  # seconds, e.g. asked for in the token
    template_data: dict[str, Any] | None = None
    renewal_of: str | None = None  # serial of the certificate being renewed
    after_expiry: bool = False
    # Name-policy levels checked before the provisioner's and the authority's (ACME: the
    # EAB key's policy), as (label, policy) pairs.
    extra_policy_levels: list[tuple[str, policy.Policy | None]] = field(default_factory=list)
    # The registration authorities the request came through, bottom hop first (the CA's
    # view, ``ra.path``): stored with the certificate and in its audit record.
    ra_path: list[str] | None = None
    # /1.0/sign: the one-time token this request spends (None: the entry point has its own
    # replay protection: ACME nonces and order states, renewal, RA hop assertions).
    token_spend: TokenSpend | None = None
    # The issuance epochs (``appliance.store.epochs``) as read earlier on this request (the
    # credential's check), so it reads them once; None: the pipeline reads them.
    epochs: Mapping[str, int] | None = None
