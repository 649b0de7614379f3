"""What the issuance pipeline takes: its input contract, defined beside it.

Every entry point (REST sign and renew, ACME finalize, the API's own TLS certificate,
an RA forward) turns its credential into a ``ProvisionerContext`` and a
``SignRequest``; the pipeline reads nothing of the provisioner layer beyond these.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cryptography import x509

from appliance import durations, policy

MAX_CERT_LIFETIME = 100 * 366 * 86400  # seconds; any provisioner's maximum is far below


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
