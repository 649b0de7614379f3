"""Spending a one-time token: one INSERT into ``used_tokens`` in the caller's transaction.

The primary key refuses a second spend of the same id in every worker and node sharing
the database; ``replay_refused`` turns that refusal into the client's error (401, "token
already used"), and the caller's transaction rolls back with whatever else it wrote. The
pipeline spends with the serial reservation (or with a refusal's audit record); revocation
spends in a transaction of its own (``appliance.provisioners.authorize``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import Table, bindparam, delete, insert
from sqlalchemy.exc import IntegrityError

from appliance.issuance.request import TokenError, TokenSpend
from appliance.store.models import UsedToken

REPLAYED = "token already used"
_USED = cast(Table, UsedToken.__table__)
_SPEND = insert(_USED)
_PRUNE_SPENT = delete(_USED).where(_USED.c.expires_at < bindparam("b_before"))


def spend(db: Any, token: TokenSpend) -> None:
    """Spend ``token`` in ``db``'s transaction (a Core connection or a session); run it
    inside ``replay_refused``. Now and then (``prune_before``) also forget ids of tokens
    that can no longer come back."""
    db.execute(_SPEND, {"jti": token.jti, "provisioner_id": token.provisioner_id,
                        "expires_at": token.expires_at, "used_at": datetime.now(UTC)})
    if token.prune_before is not None:
        db.execute(_PRUNE_SPENT, {"b_before": token.prune_before})


def prune(db: Any, before: datetime) -> int:
    """Forget spent ids of tokens that expired before ``before``; how many."""
    return int(db.execute(_PRUNE_SPENT, {"b_before": before}).rowcount)


@contextlib.contextmanager
def replay_refused() -> Iterator[None]:
    """Around a transaction that spends a token: the primary key's refusal of the spent id
    is a replay (``TokenError``, raised after the transaction rolled back)."""
    try:
        yield
    except IntegrityError as exc:
        if _is_replay(exc):
            raise TokenError(REPLAYED) from None
        raise


def _is_replay(exc: IntegrityError) -> bool:
    """Whether the refused row is a spent token (not, say, a serial that collided):
    SQLite names ``used_tokens.jti``, PostgreSQL the constraint ``pk_used_tokens``."""
    return "used_tokens" in str(exc.orig).lower()
