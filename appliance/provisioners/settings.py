"""A provisioner's settings and claims, and how they fall back to the authority's."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from appliance import durations
from appliance.config import ClaimsConfig, ServiceConfig
from appliance.issuance.request import EffectiveClaims

ProvisionerType = Literal["jwk", "x5c", "acme", "ra"]
AcmeChallengeType = Literal["http-01", "dns-01", "tls-alpn-01"]
ALL_CHALLENGES: tuple[AcmeChallengeType, ...] = ("http-01", "dns-01", "tls-alpn-01")
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
RA_NAME_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"  # the hop assertion's ``iss``


class Claims(BaseModel):
    """Per-provisioner overrides (None = use the authority's)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_duration: int | None = Field(default=None, ge=1)
    max_duration: int | None = Field(default=None, ge=1)
    default_duration: int | None = Field(default=None, ge=1)
    disable_renewal: bool | None = None
    allow_renewal_after_expiry: bool | None = None
    renewal_grace: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> Claims:
        durations.check_bounds(self.min_duration, self.default_duration, self.max_duration)
        return self


class ProvisionerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    claims: Claims = Claims()
    template: str | None = Field(default=None, max_length=64)
    require_inventory: bool = False
    allow_template_data: bool = False
    # acme only: accounts must be bound to an operator-made EAB key (RFC 8555 §7.3.4), and
    # the challenge types offered.
    require_eab: bool = False
    challenges: tuple[AcmeChallengeType, ...] = Field(default=ALL_CHALLENGES, min_length=1,
                                                     max_length=3)
    # Any type: a disabled provisioner is refused at authentication (audited), at once in
    # every worker (the row is read on every request). A disabled ``ra`` also cuts every RA
    # registered below it.
    disabled: bool = False
    # ra only: the registered RA this one was registered through (its parent on the path),
    # None for an RA that reports to this node directly.
    ra_parent: str | None = Field(default=None, pattern=RA_NAME_PATTERN)


def effective(claims: Claims, authority: ClaimsConfig) -> EffectiveClaims:
    def pick(mine: int | None, theirs: str | None) -> int | None:
        if mine is not None:
            return mine
        return durations.parse(theirs) if theirs is not None else None

    min_d = pick(claims.min_duration, authority.min_duration)
    max_d = pick(claims.max_duration, authority.max_duration)
    default_d = pick(claims.default_duration, authority.default_duration)
    assert min_d is not None and max_d is not None and default_d is not None
    return EffectiveClaims(
        min_duration=min_d, max_duration=max_d, default_duration=min(max(default_d, min_d), max_d),
        disable_renewal=(claims.disable_renewal if claims.disable_renewal is not None
                         else authority.disable_renewal),
        allow_renewal_after_expiry=(claims.allow_renewal_after_expiry
                                    if claims.allow_renewal_after_expiry is not None
                                    else authority.allow_renewal_after_expiry),
        renewal_grace=pick(claims.renewal_grace, authority.renewal_grace),
    )


def check_effective(claims: Claims, authority: ClaimsConfig) -> None:
    """ValueError if ``claims`` over the authority's defaults give bounds no request can meet
    (``--max-duration 1m`` under the authority's 5m minimum) or a default of its own outside
    them. The authority's default is not held against a provisioner's bounds: ``effective``
    clamps it into them (``--max-duration 1h`` alone means a 1h default)."""
    def pick(mine: int | None, theirs: str) -> int:
        return mine if mine is not None else durations.parse(theirs)

    durations.check_bounds(pick(claims.min_duration, authority.min_duration),
                           claims.default_duration,
                           pick(claims.max_duration, authority.max_duration),
                           "with the authority's claims (appliance.yaml)")


def sign_audience(api_hostname: str, api_listen: str, path: str = "/1.0/sign") -> str:
    """The ``aud`` a one-time token must carry: the URL it will be presented to."""
    port = api_listen.rsplit(":", 1)[1]
    host = f"[{api_hostname}]" if ":" in api_hostname else api_hostname
    return f"https://{host}:{port}{path}"


def accepted_audiences(svc: ServiceConfig, path: str = "/1.0/sign") -> list[str]:
    """Every ``aud`` this node takes for ``path``: its own API URL and, when
    ``service.external_url`` is set, that one (a load balancer's name in front of several
    nodes: a token minted for it is good at whichever node the balancer picks, once)."""
    own = sign_audience(svc.api_hostname, svc.api_listen, path)
    if svc.external_url is None:
        return [own]
    external = svc.external_base_url() + path
    return [own] if external == own else [external, own]
