"""Destroying token objects for zeroization (``appliance hsm zeroize``).

Kept in the token room so that PKCS#11 stays behind one door: the caller
(:mod:`appliance.ops.zeroize`) audits, retires and wipes; this only lists and destroys
objects. One key pair by label (private and public objects), or every object the token
holds for us (keys of every class, certificates, data objects such as audit anchors).
"""

from __future__ import annotations

import contextlib
from typing import Any

from pkcs11 import Attribute, ObjectClass
from pkcs11 import exceptions as p11e

from appliance.hsm.keys import check_label
from appliance.hsm.pool import PooledSession, SessionPool

_KEY_CLASSES = (ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY)
_ALL_CLASSES = (ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY, ObjectClass.SECRET_KEY,
                ObjectClass.DATA, ObjectClass.CERTIFICATE)


def _describe(obj: Any, cls: ObjectClass) -> dict[str, str]:
    out = {"class": cls.name.lower()}
    for attr, name in ((Attribute.LABEL, "label"), (Attribute.ID, "id")):
        with contextlib.suppress(p11e.PKCS11Error, KeyError):
            value = obj[attr]
            out[name] = value.hex() if isinstance(value, bytes) else str(value)
    return out


def _objects(ps: PooledSession, label: str | None) -> list[tuple[Any, dict[str, str]]]:
    found = []
    for cls in (_KEY_CLASSES if label is not None else _ALL_CLASSES):
        template: dict[Any, Any] = {Attribute.CLASS: cls}
        if label is not None:
            template[Attribute.LABEL] = label
        found += [(obj, _describe(obj, cls)) for obj in list(ps.session.get_objects(template))]
    return found


def inventory(pool: SessionPool, label: str | None) -> list[dict[str, str]]:
    """What :func:`destroy` would destroy: the key pair ``label``, or (None) everything."""
    if label is not None:
        check_label(label)
    return pool.run(lambda ps: [d for _, d in _objects(ps, label)])


def destroy(pool: SessionPool, label: str | None) -> list[dict[str, str]]:
    """Destroy the key pair ``label``, or (None) every object; returns what was destroyed."""
    if label is not None:
        check_label(label)

    def work(ps: PooledSession) -> list[dict[str, str]]:
        done = []
        for obj, desc in _objects(ps, label):
            obj.destroy()
            done.append(desc)
        ps.cache.clear()
        return done

    return pool.run(work, retry=False)
