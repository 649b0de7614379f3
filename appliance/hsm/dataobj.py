"""Small data objects (CKO_DATA) in the token: values that must outlive the database.

The audit anchor is one: the newest checkpoint of a node, kept where someone
who can rewrite the database file cannot roll it back (without the token's
PIN). Objects are private token objects, so only a logged-in session reads or
changes them, and they are found by label (one label, one object).
"""

from __future__ import annotations

from pkcs11 import Attribute, ObjectClass

from appliance.errors import HsmError
from appliance.hsm.pool import PooledSession, SessionPool

APPLICATION = "appliance"
MAX_VALUE = 16 * 1024
MAX_LABEL = 128


def check_label(label: str) -> str:
    if not label or len(label) > MAX_LABEL or not label.isprintable():
        raise HsmError(f"a data object label must be 1..{MAX_LABEL} printable characters")
    return label


def read(pool: SessionPool, label: str) -> list[bytes]:
    """The values of the data objects labelled ``label``: none, one, or (after a replace
    interrupted between its two steps) the old and the new; the caller tells them apart."""
    check_label(label)

    def work(ps: PooledSession) -> list[bytes]:
        found = list(ps.session.get_objects(
            {Attribute.CLASS: ObjectClass.DATA, Attribute.LABEL: label}))
        return [bytes(obj[Attribute.VALUE]) for obj in found]

    return pool.run(work)


def read_prefixed(pool: SessionPool, prefix: str) -> dict[str, list[bytes]]:
    """Every data object whose label starts with ``prefix``: values by label."""

    def work(ps: PooledSession) -> dict[str, list[bytes]]:
        out: dict[str, list[bytes]] = {}
        objs = list(ps.session.get_objects({Attribute.CLASS: ObjectClass.DATA}))
        for obj in objs:
            label = str(obj[Attribute.LABEL])
            if label.startswith(prefix):
                out.setdefault(label, []).append(bytes(obj[Attribute.VALUE]))
        return out

    return pool.run(work)


def replace(pool: SessionPool, label: str, value: bytes) -> None:
    """Make ``value`` the data object ``label``: the new object first, then the old ones go.

    Not an in-place C_SetAttributeValue: SoftHSM (and some HSMs) keep a data object's
    CKA_VALUE read-only. Creating before destroying means an interruption leaves two
    objects, never none.
    """
    check_label(label)
    if len(value) > MAX_VALUE:
        raise HsmError(f"a data object holds at most {MAX_VALUE} bytes")

    def work(ps: PooledSession) -> None:
        old = list(ps.session.get_objects(
            {Attribute.CLASS: ObjectClass.DATA, Attribute.LABEL: label}))
        ps.session.create_object({
            Attribute.CLASS: ObjectClass.DATA, Attribute.TOKEN: True, Attribute.PRIVATE: True,
            Attribute.MODIFIABLE: True, Attribute.LABEL: label,
            Attribute.APPLICATION: APPLICATION, Attribute.VALUE: value,
        })
        for obj in old:
            obj.destroy()

    pool.run(work, retry=False)


def delete(pool: SessionPool, label: str) -> None:
    check_label(label)

    def work(ps: PooledSession) -> None:
        for obj in list(ps.session.get_objects(
                {Attribute.CLASS: ObjectClass.DATA, Attribute.LABEL: label})):
            obj.destroy()

    pool.run(work)
