"""Schema upgrades as audited changes: the event is written when a revision changes.

An upgrade is refused while another node of another version runs against this database
(its heartbeat is fresh and not stopped, see :mod:`appliance.cluster.nodes`): the old
code would go on writing into a schema it does not know. The same node id is this node
(restarted, or its sibling ``serve --only``). The refusal changes nothing, so it is
logged, not audited. Nodes of versions older than migration 0012 write no heartbeat and
cannot be seen: before that upgrade, stop them by hand.
"""

from __future__ import annotations

from appliance import __version__, logs
from appliance.audit.log import Actor
from appliance.cluster import nodes
from appliance.errors import ApplianceError
from appliance.runtime import Appliance
from appliance.store import migrate

log = logs.get("ops.schema")


class SchemaUpgradeRefused(ApplianceError):
    """Other nodes of another version are running: upgrading would pull the schema from
    under them."""

    code = "schema_upgrade_refused"
    status = 409


def other_versions_running(app: Appliance) -> list[nodes.NodeView]:
    """Nodes other than this one, live, whose version is not this node's."""
    stale_after = app.settings.config.cluster.stale_after_seconds
    return [n for n in nodes.read_all(app.db, stale_after)
            if n.node_id != app.node_id and n.state == "live" and n.version != __version__]


def upgrade(app: Appliance, actor: Actor) -> str:
    before = migrate.current(app.db)
    if before != migrate.head():
        others = other_versions_running(app)
        if others:
            named = ", ".join(f"{n.node_id} (version {n.version} on {n.hostname}, heartbeat "
                              f"{n.age_seconds:.0f}s ago)" for n in others)
            log.warning("schema upgrade refused: other nodes of another version are running",
                        extra={"nodes": [n.node_id for n in others], "revision": before,
                               "version": __version__})
            raise SchemaUpgradeRefused(
                f"the schema upgrade from revision {before} to {migrate.head()} (version "
                f"{__version__}) is refused while other nodes of another version are running "
                f"against this database: {named}; stop them or upgrade them first")
    after = migrate.upgrade(app.db)
    if before != after:
        with app.db.transaction() as db:
            app.audit_log().append(db, "schema.upgraded", actor,
                                   object_ids={"database": app.db.dialect},
                                   details={"from": before, "to": after})
    return after
