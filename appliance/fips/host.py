"""What the FIPS room needs of the runtime's ``Appliance``, as a structural type.

The runtime stands above this room (it runs these tests before it signs), so the room
cannot import it; ``Appliance`` has these members and is passed in.
"""

from __future__ import annotations

from typing import Protocol

from appliance.audit.log import AuditLog
from appliance.config import Settings
from appliance.hsm.pool import SessionPool
from appliance.store.db import Database


class Host(Protocol):
    settings: Settings

    @property
    def node_id(self) -> str: ...

    @property
    def pool(self) -> SessionPool: ...

    @property
    def db(self) -> Database: ...

    def audit_log(self, *, signing: bool = False) -> AuditLog: ...
