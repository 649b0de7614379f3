"""``appliance cluster``: the nodes that share this database, and what they publish.

``status`` only reads: the nodes' heartbeats (live, stale, stopped as this node's
``cluster.stale_after_seconds`` decides), the newest CRL of each authority (and shard),
the pre-signed OCSP responses and whether the configured Redis answers.
"""

from __future__ import annotations

from typing import Any

import click

from appliance.cli.cluster_add import add_node_cmd
from appliance.cli.context import CliContext, emit_json, fields, location_options, pass_ctx, table
from appliance.cluster import status as cluster_status


@click.group()
def cluster() -> None:
    """Several nodes on one database: their state, CRLs and OCSP; making a node."""


cluster.add_command(add_node_cmd)


def _age(seconds: float) -> str:
    s = int(seconds)
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    if s < 172_800:
        return f"{s // 3600}h"
    return f"{s // 86400}d"


def _yes_no(value: bool | None) -> str | None:
    return None if value is None else ("yes" if value else "NO")


def _node_rows(doc: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for n in doc["nodes"]:
        listeners = [f"api {n['api_listen']}" if n["api_listen"] else None,
                     f"http {n['http_listen']}" if n["http_listen"] else None]
        rows.append({
            "node": n["node_id"] + (" (this)" if n["node_id"] == doc["this_node"]["node_id"]
                                    else ""),
            "state": n["state"].upper() if n["state"] == "stale" else n["state"],
            "version": n["version"], "schema": n["schema_revision"], "role": n["role"],
            "host": f"{n['hostname']}:{n['pid']}",
            "listeners": ", ".join(x for x in listeners if x) or None,
            "heartbeat": f"{n['last_heartbeat'][:19]}Z ({_age(n['age_seconds'])} ago)",
            "token": _yes_no(n["token_reachable"]), "self-tests": _yes_no(n["selftests_passed"]),
        })
    return rows


def _crl_rows(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"authority": c["authority"], "shard": c["shard"], "number": c["number"],
             "this update": c["this_update"][:19] + "Z", "age": _age(c["age_seconds"]),
             "next update": c["next_update"][:19] + "Z", "entries": c["entries"],
             "state": "OVERDUE" if c["overdue"] else "fresh"} for c in doc["crls"]]


@cluster.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@location_options
@pass_ctx
def status(ctx: CliContext, as_json: bool) -> None:
    """Nodes (version, schema, heartbeat, token, self-tests), CRLs and OCSP state."""
    doc = cluster_status.gather(ctx.app())
    if as_json:
        emit_json(doc)
        return
    schema = doc["schema"]
    fields({"this node": f"{doc['this_node']['node_id']} (version "
                         f"{doc['this_node']['version']})",
            "schema": f"{schema['database'] or '(empty)'} (newest {schema['newest']})",
            "stale after": f"{doc['stale_after_seconds']}s without a heartbeat"})
    click.echo("\nnodes:")
    table(_node_rows(doc), ["node", "state", "version", "schema", "role", "host",
                            "listeners", "heartbeat", "token", "self-tests"])
    click.echo("\nCRLs (newest per authority):")
    crl_rows = _crl_rows(doc)
    sharded = any(r["shard"] is not None for r in crl_rows)
    table(crl_rows, ["authority", *(["shard"] if sharded else []), "number", "this update",
                     "age", "next update", "entries", "state"])
    ocsp = doc["ocsp"]
    redis = ocsp["redis"]
    click.echo("\nOCSP:")
    fields({
        "responses": ocsp["responses"],
        "earliest next update": None if ocsp["earliest_next_update"] is None else
        ocsp["earliest_next_update"][:19] + "Z" + (" (OVERDUE)" if ocsp["overdue"] else ""),
        "redis": "not configured" if not redis["configured"] else
        f"{redis['url']}: " + ("answers" if redis["reachable"]
                               else f"NOT reachable ({redis['error']})"),
    }, width=24)
