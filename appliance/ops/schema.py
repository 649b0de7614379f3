"""Schema upgrades as audited changes: the event is written when a revision changes."""

from __future__ import annotations

from appliance.audit.log import Actor
from appliance.runtime import Appliance
from appliance.store import migrate


def upgrade(app: Appliance, actor: Actor) -> str:
    before = migrate.current(app.db)
    after = migrate.upgrade(app.db)
    if before != after:
        with app.db.transaction() as db:
            app.audit_log().append(db, "schema.upgraded", actor,
                                   object_ids={"database": app.db.dialect},
                                   details={"from": before, "to": after})
    return after
