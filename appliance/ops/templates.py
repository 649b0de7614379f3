"""Stored templates: add (tried on sample requests before saving), list, show, remove; each
change audited.

A stored template with the name of a shipped one takes its place for every
provisioner that names it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from appliance.audit.log import Actor
from appliance.errors import ApplianceError
from appliance.runtime import Appliance
from appliance.store.models import Template
from appliance.templates import trial
from appliance.templates.shipped import builtin_templates

NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"


class TemplateStoreError(ApplianceError):
    code = "not_found"
    status = 404


def add(app: Appliance, name: str, source: str, actor: Actor, *, replace: bool = False,
        sample_data: dict[str, Any] | None = None, strict: bool = False
        ) -> list[trial.SampleOutcome]:
    """Store ``source`` as template ``name``; how it rendered for each sample request.

    A template that cannot work as written (``trial.check``: it renders for no sample and
    fails on one, or with ``strict`` fails on any) is never stored: the ``TemplateError``
    names the sample and the fault."""
    outcomes = trial.check(name, source, data=sample_data, strict=strict)
    with app.db.transaction() as db:
        row = db.scalars(select(Template).where(Template.name == name)).one_or_none()
        if row is not None and not replace:
            raise TemplateStoreError(f"template {name!r} exists; use --replace to change it")
        before = row.source if row is not None else None
        if row is None:
            db.add(Template(name=name, source=source, updated_at=datetime.now(UTC)))
        else:
            row.source = source
            row.updated_at = datetime.now(UTC)
        app.audit_log().append(db, "template.set", actor, object_ids={"template": name},
                               details={"replaced": before is not None, "before": before,
                                        "after": source})
    return outcomes


def remove(app: Appliance, name: str, actor: Actor) -> None:
    with app.db.transaction() as db:
        row = db.scalars(select(Template).where(Template.name == name)).one_or_none()
        if row is None:
            raise TemplateStoreError(f"no stored template named {name!r}")
        db.delete(row)
        app.audit_log().append(db, "template.removed", actor, object_ids={"template": name},
                               details={"before": row.source})


def list_all(app: Appliance) -> list[dict[str, Any]]:
    with app.db.sessions() as db:
        stored = {r.name: r for r in db.scalars(select(Template)).all()}
    out: list[dict[str, Any]] = [
        {"name": n, "source": "stored", "updated_at": r.updated_at.isoformat()}
        for n, r in stored.items()]
    out += [{"name": n, "source": "built-in", "updated_at": None}
            for n in builtin_templates() if n not in stored]
    return sorted(out, key=lambda r: str(r["name"]))


def show(app: Appliance, name: str) -> str:
    return str(describe(app, name)["text"])


def describe(app: Appliance, name: str) -> dict[str, Any]:
    """The template issuance uses under ``name``: its text, and whether it is stored."""
    with app.db.sessions() as db:
        row = db.scalars(select(Template).where(Template.name == name)).one_or_none()
        if row is not None:
            return {"name": name, "source": "stored", "updated_at": row.updated_at.isoformat(),
                    "text": str(row.source)}
    builtin = builtin_templates()
    if name in builtin:
        return {"name": name, "source": "built-in", "updated_at": None, "text": builtin[name]}
    raise TemplateStoreError(f"no template named {name!r}")
