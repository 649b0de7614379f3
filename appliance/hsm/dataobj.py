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


def read(pool: SessionPool, label: str) -> bytes | None:
    """The value of the data object ``label``, or None when the token has none."""
    check_label(label)

    def work(ps: PooledSession) -> bytes | None:
        found = list(ps.session.get_objects(
            {Attribute.CLASS: ObjectClass.DATA, Attribute.LABEL: label}))
        if len(found) > 1:
            raise HsmError(f"{len(found)} data objects are labelled {label!r}; refusing to guess")
        return bytes(found[0][Attribute.VALUE]) if found else None

    return pool.run(work)


def read_prefixed(pool: SessionPool, prefix: str) -> dict[str, bytes]:
    """Every data object whose label starts with ``prefix``, by label."""

    def work(ps: PooledSession) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        objs = list(ps.session.get_objects({Attribute.CLASS: ObjectClass.DATA}))
        for obj in objs:
            label = str(obj[Attribute.LABEL])
            if label.startswith(prefix):
                if label in out:
                    raise HsmError(f"several data objects are labelled {label!r}")
                out[label] = bytes(obj[Attribute.VALUE])
        return out

    return pool.run(work)


def write(pool: SessionPool, label: str, value: bytes) -> None:
    """Set the value of data object ``label``, creating it on first use."""
    check_label(label)
    if len(value) > MAX_VALUE:
        raise HsmError(f"a data object holds at most {MAX_VALUE} bytes")

    def work(ps: PooledSession) -> None:
        found = list(ps.session.get_objects(
            {Attribute.CLASS: ObjectClass.DATA, Attribute.LABEL: label}))
        if len(found) > 1:
            raise HsmError(f"{len(found)} data objects are labelled {label!r}; refusing to guess")
        if found:
            found[0][Attribute.VALUE] = value
            return
        ps.session.create_object({
            Attribute.CLASS: ObjectClass.DATA, Attribute.TOKEN: True, Attribute.PRIVATE: True,
            Attribute.MODIFIABLE: True, Attribute.LABEL: label,
            Attribute.APPLICATION: APPLICATION, Attribute.VALUE: value,
        })

    pool.run(work)


def delete(pool: SessionPool, label: str) -> None:
    check_label(label)

    def work(ps: PooledSession) -> None:
        for obj in list(ps.session.get_objects(
                {Attribute.CLASS: ObjectClass.DATA, Attribute.LABEL: label})):
            obj.destroy()

    pool.run(work)
