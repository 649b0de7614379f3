"""Which mode this installation is in, and the refusal of a node whose configuration differs.

The mode is chosen once, by ``appliance init`` (``--fips`` or not), and recorded in the
database (``Installation`` row ``mode``): the database is what every node of an installation
shares, so it, not one node's ``appliance.yaml``, is the truth. Every key made in the default
mode was made outside the FIPS rules, so the mode can never be switched on in place (nor off:
that would let the FIPS keys be used under the wider table); a node whose file says otherwise
refuses to start (``serve``) and to use a key (``Appliance.signing_pool``), with a message
that says which side says what. An installation made before the mode existed has no row and
counts as ``default``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from sqlalchemy import inspect, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from appliance.config import Settings
from appliance.errors import ConfigError, DatabaseError, ServerFault
from appliance.store.db import Database, as_fault
from appliance.store.models import AuditEvent, Installation

Mode = Literal["default", "fips"]
MODES: tuple[Mode, ...] = ("default", "fips")
MODE_KEY = "mode"
# How each mode is named in messages.
_SAID = {"default": "the default (non-FIPS) mode", "fips": "FIPS mode"}


class FipsModeMismatch(ServerFault):
    """This node's configuration says another mode than the one the installation was made in:
    the node refuses to start and to use a key until the configuration says it again."""

    code = "fips_mode_mismatch"


class FipsModeIrreversible(ConfigError):
    """A mode change asked of an existing installation (``init --fips`` on a data directory or
    a database that already holds one): new keys are needed, so a new installation is."""

    code = "fips_mode_irreversible"


def configured(settings: Settings) -> Mode:
    """The mode this node's configuration says (``fips.enabled``)."""
    return "fips" if settings.config.fips.enabled else "default"


def _parse(value: str) -> Mode:
    if value not in MODES:
        raise ConfigError(f"the database records an unknown installation mode {value!r} "
                          f"(expected {' or '.join(MODES)}); refusing to guess")
    return value


def recorded_in(session: Session) -> Mode | None:
    """The mode row in ``session``'s database, or ``None`` when there is none."""
    row = session.get(Installation, MODE_KEY)
    return None if row is None else _parse(row.value)


def recorded(db: Database) -> Mode:
    """The mode the installation was made in; ``default`` for one made before modes existed
    (no row, or a schema older than the table)."""
    try:
        if not inspect(db.engine).has_table(Installation.__tablename__):
            return "default"
        with db.sessions() as session:
            return recorded_in(session) or "default"
    except OperationalError as exc:
        raise as_fault(exc) or DatabaseError(str(exc)) from exc


def mismatch_message(recorded_mode: Mode, configured_mode: Mode, settings: Settings) -> str:
    """The words of the refusal: which side says what, and the only ways out."""
    where = f" ({settings.path})" if settings.path is not None else ""
    flag = "true" if configured_mode == "fips" else "false"
    text = (f"this installation was initialised in {_SAID[recorded_mode]}; the configuration"
            f"{where} says fips.enabled: {flag}. ")
    if recorded_mode == "fips":
        return text + ("The FIPS mode cannot be switched off: set fips.enabled: true again. "
                       "This node refuses to start and to use a key until then.")
    return text + ("The FIPS mode cannot be switched on in place (new keys are needed): set "
                   "fips.enabled: false again, or make a new installation with "
                   "`appliance init --dir NEW_DIR --fips`. This node refuses to start and to "
                   "use a key until then.")


def require_consistent(settings: Settings, db: Database) -> Mode:
    """The installation's mode, if this node's configuration says the same; otherwise
    :class:`FipsModeMismatch` (a fault of this node, not of any client)."""
    was, now = recorded(db), configured(settings)
    if was != now:
        raise FipsModeMismatch(mismatch_message(was, now, settings))
    return was


@dataclass(frozen=True)
class ModeState:
    """What ``fips status`` shows: both sides, and whether this node may start."""

    recorded: Mode
    configured: Mode

    @property
    def consistent(self) -> bool:
        return self.recorded == self.configured


def state(settings: Settings, db: Database) -> ModeState:
    """Both sides without refusing: for commands that only read (``fips status``)."""
    return ModeState(recorded(db), configured(settings))


def record_at_init(session: Session, mode: Mode) -> Mode | None:
    """Write the installation's mode in ``session`` (the transaction of ``appliance init``,
    which audits it). Returns the mode the database held before (``None``: a new database).

    A database that already holds an installation (a second node's init on a shared
    database) keeps its mode: asking for the other one is :class:`FipsModeIrreversible`,
    and nothing is written. One made before modes existed (audit records but no row) is a
    ``default`` installation; its row is written now."""
    before = recorded_in(session)
    if before is None and session.execute(select(AuditEvent.id).limit(1)).first() is not None:
        before = "default"
    if before is not None and before != mode:
        raise FipsModeIrreversible(
            f"the database already holds an installation in {_SAID[before]}; a node cannot "
            f"join it in {_SAID[mode]}. "
            + ("The FIPS mode cannot be switched on in place (new keys are needed): make a "
               "new installation with its own database." if mode == "fips" else
               "The FIPS mode cannot be switched off: initialise this node with --fips."))
    if session.get(Installation, MODE_KEY) is None:
        session.add(Installation(key=MODE_KEY, value=mode, recorded_at=datetime.now(UTC)))
    return before
