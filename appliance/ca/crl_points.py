"""Where a certificate's CRL is published: the CRL DP the pipeline writes and the IDP the
CRL publisher must name match only if both come from here.

With ``revocation.crl_shards`` N > 0 a new leaf of an issuing CA goes to shard
``serial mod N`` and its CRL DP names ``/crl/<authority>/<shard>.crl``; otherwise (and
for every certificate issued before sharding was turned on) ``/crl/<authority>.crl``.
"""

from __future__ import annotations

from appliance.config import ApplianceConfig
from appliance.store.models import Authority

MAX_SHARD = 4095  # revocation.crl_shards is at most 4096


def shard_of(serial: int, authority: Authority, cfg: ApplianceConfig) -> int | None:
    """The CRL shard a new certificate belongs to, or None (the unsharded CRL). Recorded in
    the reservation even when a template names its own CRL URLs, so the shard's CRL lists
    the certificate whatever its CRL DP says."""
    shards = cfg.revocation.crl_shards
    if shards <= 0 or authority.kind == "root":
        return None  # a root's CRL is scoped to CA certificates (onlyContainsCACerts)
    return serial % shards


def url(base: str, authority: str, shard: int | None) -> str:
    """The CRL DP of a certificate of ``authority`` in ``shard`` (None: unsharded)."""
    base = base.rstrip("/")
    if shard is None:
        return f"{base}/crl/{authority}.crl"
    return f"{base}/crl/{authority}/{shard}.crl"
