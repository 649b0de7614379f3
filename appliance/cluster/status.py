"""What ``appliance cluster status`` reports: the nodes, the CRLs, the OCSP responses.

Read-only, and cheap enough to run against a large CA: CRLs are read without their
bytes (the newest of each authority and shard), OCSP responses are counted and their
earliest nextUpdate found in one grouped query. Redis, when configured, is asked for a
PING with a short timeout; its absence or silence is reported, never raised.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select

from appliance import __version__
from appliance.cluster import nodes
from appliance.config_doc import redact_url
from appliance.rfc3339 import to_utc
from appliance.runtime import Appliance
from appliance.store import migrate
from appliance.store.models import Authority, Crl, OcspResponse

REDIS_PING_SECONDS = 1.0


def _crls(app: Appliance, now: datetime) -> list[dict[str, Any]]:
    """The newest CRL of each authority (of each shard, where shards are published)."""
    with app.db.sessions() as s:
        newest = (select(Crl.authority_id, Crl.shard, func.max(Crl.number).label("number"))
                  .group_by(Crl.authority_id, Crl.shard).subquery())
        rows = s.execute(
            select(Authority.name, Crl.shard, Crl.number, Crl.this_update, Crl.next_update,
                   Crl.entries)
            .join(newest, (Crl.authority_id == newest.c.authority_id)
                  & (Crl.number == newest.c.number))
            .join(Authority, Authority.id == Crl.authority_id)
            .order_by(Authority.name, Crl.shard)).all()
    out = []
    for name, shard, number, this_update, next_update, entries in rows:
        this_update, next_update = to_utc(this_update), to_utc(next_update)
        out.append({"authority": name, "shard": shard, "number": int(number),
                    "this_update": this_update.isoformat(),
                    "next_update": next_update.isoformat(),
                    "age_seconds": round((now - this_update).total_seconds(), 1),
                    "entries": int(entries), "overdue": now > next_update})
    return out


def _ocsp_responses(app: Appliance, now: datetime) -> dict[str, Any]:
    with app.db.sessions() as s:
        rows = s.execute(
            select(Authority.name, func.count(), func.min(OcspResponse.next_update))
            .join(Authority, Authority.id == OcspResponse.authority_id)
            .group_by(Authority.name).order_by(Authority.name)).all()
    by_authority = []
    for name, count, earliest in rows:
        first = to_utc(earliest) if earliest is not None else None
        by_authority.append({"authority": name, "responses": int(count),
                             "earliest_next_update": first.isoformat() if first else None,
                             "overdue": first is not None and now > first})
    earliest_all = min((to_utc(e) for _n, _c, e in rows if e is not None), default=None)
    return {"responses": sum(int(c) for _n, c, _e in rows),
            "earliest_next_update": earliest_all.isoformat() if earliest_all else None,
            "overdue": earliest_all is not None and now > earliest_all,
            "by_authority": by_authority}


def redis_state(url: str | None, timeout: float = REDIS_PING_SECONDS) -> dict[str, Any]:
    """Whether the configured Redis answers a PING (URL shown with its password redacted)."""
    if not url:
        return {"configured": False, "url": None, "reachable": None, "error": None}
    import redis

    shown = redact_url(url)
    try:
        client = redis.Redis.from_url(url, socket_timeout=timeout,
                                      socket_connect_timeout=timeout)
        try:
            ok = bool(client.ping())
        finally:
            client.close()
    except Exception as exc:
        return {"configured": True, "url": shown, "reachable": False,
                "error": type(exc).__name__}
    return {"configured": True, "url": shown, "reachable": ok, "error": None}


def gather(app: Appliance) -> dict[str, Any]:
    """The whole report (``cluster status --json`` prints it as it is: stable keys)."""
    now = datetime.now(UTC)
    cfg = app.settings.config
    stale_after = cfg.cluster.stale_after_seconds
    revision = migrate.current(app.db)
    views = nodes.read_all(app.db, stale_after)
    # An empty database (not initialised yet) has no CRLs and no responses to count.
    ocsp = _ocsp_responses(app, now) if revision else {
        "responses": 0, "earliest_next_update": None, "overdue": False, "by_authority": []}
    ocsp["redis"] = redis_state(cfg.ocsp.redis_url)
    return {
        "now": now.isoformat(),
        "this_node": {"node_id": app.node_id, "version": __version__},
        "schema": {"database": revision, "newest": migrate.head()},
        "stale_after_seconds": stale_after,
        "nodes": [v.as_json() for v in views],
        "crls": _crls(app, now) if revision else [],
        "ocsp": ocsp,
    }
