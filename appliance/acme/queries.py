"""The ACME tables and the statements more than one resource runs (orders are created by
newOrder, advanced by a challenge's outcome, claimed and completed by finalize), built once
with their values bound per call."""

from __future__ import annotations

from typing import cast

from sqlalchemy import Table, bindparam, insert, select, update

from appliance.store.models import AcmeAuthorization, AcmeChallenge, AcmeOrder

ORDERS = cast(Table, AcmeOrder.__table__)
AUTHZS = cast(Table, AcmeAuthorization.__table__)
CHALLS = cast(Table, AcmeChallenge.__table__)
INSERT_ORDER = insert(ORDERS)
INSERT_AUTHZ = insert(AUTHZS)
INSERT_CHALL = insert(CHALLS)
ORDER_BY_ID = select(ORDERS).where(ORDERS.c.id == bindparam("b_id"))
SET_ORDER = update(ORDERS).where(ORDERS.c.id == bindparam("b_id"))
AUTHZ_IDS = select(AUTHZS.c.id).where(AUTHZS.c.order_id == bindparam("b_order")).order_by(
    AUTHZS.c.identifier_value)
