"""The configuration as a commented YAML document, written from the models themselves.

``appliance init`` writes ``appliance.yaml`` with this, so the file shows every section
and every setting with its value, its bounds and the explanation kept beside the field
in :mod:`appliance.config` (the ``#`` comments above it and the section's docstring):
a new setting appears in new files the day it is added, and a changed default or bound
cannot leave the file's comments behind. ``appliance config show`` prints the same
document for a loaded configuration, secrets in URLs redacted.
"""

from __future__ import annotations

import ast
import inspect
import re
import types
import typing
from functools import lru_cache
from typing import Any, Literal

import annotated_types
import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from appliance import config

REDACTED = "REDACTED"
_DURATION_PATTERN = typing.get_args(config.Duration)[1].metadata[0].pattern
_WIDTH = 92


@lru_cache(maxsize=1)
def _comments() -> dict[str, dict[str, list[str]]]:
    """For each model class in :mod:`appliance.config`: its docstring (key ``""``) and, per
    field, the comment lines written directly above it."""
    try:
        source = inspect.getsource(config)
    except (OSError, TypeError):  # no source shipped: the document is still complete
        return {}
    lines = source.splitlines()
    out: dict[str, dict[str, list[str]]] = {}
    for node in ast.parse(source).body:
        if not isinstance(node, ast.ClassDef):
            continue
        found: dict[str, list[str]] = {}
        doc = ast.get_docstring(node)
        if doc:
            found[""] = [" ".join(doc.split("\n\n")[0].split())]
        previous_end = node.lineno  # the class line; a docstring moves it on below
        for stmt in node.body:
            if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                above: list[str] = []
                for i in range(stmt.lineno - 2, (previous_end or 0) - 1, -1):
                    text = lines[i].strip()
                    if not text.startswith("#"):
                        break
                    above.insert(0, text.lstrip("#").rstrip())
                if above:
                    found[stmt.target.id] = above
            previous_end = stmt.end_lineno or stmt.lineno
        out[node.name] = found
    return out


def _bounds(info: FieldInfo) -> str:
    low = high = None
    for m in info.metadata:
        if isinstance(m, annotated_types.Ge):
            low = f"{m.ge}"
        elif isinstance(m, annotated_types.Gt):
            low = f">{m.gt}"
        elif isinstance(m, annotated_types.Le):
            high = f"{m.le}"
        elif isinstance(m, annotated_types.Lt):
            high = f"<{m.lt}"
        elif isinstance(m, annotated_types.MaxLen) and info.annotation is str:
            high = f"{m.max_length} characters"
    literal = _literal_choices(info.annotation)
    if literal:
        return "one of: " + ", ".join(literal)
    if low is not None and low.startswith(">"):
        low_text = f"more than {low[1:]}"
    elif low is not None:
        low_text = f"at least {low}"
    if low is not None and high is not None:
        return f"{low}..{high}" if not low.startswith(">") else f"{low_text}, at most {high}"
    if low is not None:
        return low_text
    if high is not None:
        return f"at most {high}"
    if _is_duration(info):
        return "a duration: 90s, 5m, 24h, 30d, 1h30m"
    return ""


def _literal_choices(annotation: Any) -> list[str]:
    if typing.get_origin(annotation) is Literal:
        return [str(a) for a in typing.get_args(annotation)]
    return []


def _is_duration(info: FieldInfo) -> bool:
    """Whether the field is a ``config.Duration`` (its pattern), optional or not."""
    ann = info.annotation
    union = typing.get_origin(ann) in (typing.Union, types.UnionType)
    metadata = list(info.metadata)
    for arg in typing.get_args(ann) if union else ():
        for m in getattr(arg, "__metadata__", ()):
            metadata += m.metadata if isinstance(m, FieldInfo) else [m]
    return any(getattr(m, "pattern", None) == _DURATION_PATTERN for m in metadata)


def _wrap(text: str, indent: str) -> list[str]:
    words, out, line = text.split(), [], ""
    for word in words:
        if line and len(indent) + 2 + len(line) + 1 + len(word) > _WIDTH:
            out.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    if line:
        out.append(line)
    return [f"{indent}# {w}" for w in out]


def _scalar(name: str, value: Any, indent: str) -> list[str]:
    text = yaml.safe_dump({name: value}, sort_keys=False, default_flow_style=False,
                          allow_unicode=True, width=1000)
    return [indent + line for line in text.rstrip("\n").splitlines()]


def _section(model: type[BaseModel], values: dict[str, Any], indent: str) -> list[str]:
    notes = _comments().get(model.__name__, {})
    out: list[str] = []
    for name, info in model.model_fields.items():
        annotation = info.annotation
        value = values.get(name)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            out.append("")
            sub_notes = _comments().get(annotation.__name__, {})
            for line in sub_notes.get("", []):
                out += _wrap(line, indent)
            out += _wrap_lines(notes.get(name, []), indent)
            out.append(f"{indent}{name}:")
            out += _section(annotation, value or {}, indent + "  ")
            continue
        out += _wrap_lines(notes.get(name, []), indent)
        bounds = _bounds(info)
        lines = _scalar(name, value, indent)
        if bounds and len(lines) == 1 and len(lines[0]) + len(bounds) + 4 <= _WIDTH + 8:
            lines[0] += f"  # {bounds}"
        elif bounds:
            out.append(f"{indent}# ({bounds})")
        out += lines
    return out


def _wrap_lines(lines: list[str], indent: str) -> list[str]:
    """Comment lines as written in config.py (already short), re-indented."""
    return [f"{indent}#{' ' if line and not line.startswith(' ') else ''}{line}"
            for line in lines]


def document(cfg: config.ApplianceConfig | dict[str, Any], header: str = "") -> str:
    """``cfg`` (or its ``model_dump(mode="json")``, e.g. redacted) as a YAML document with
    every setting and its explanation; loading it gives ``cfg`` back
    (``tests/unit/test_config_doc.py``)."""
    values = cfg.model_dump(mode="json") if isinstance(cfg, BaseModel) else cfg
    out = [f"# {line}" if line else "#" for line in header.splitlines()] + [""]
    out += _section(config.ApplianceConfig, values, "")
    return "\n".join(out).strip("\n") + "\n"


_URL_SECRET = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^:@/]*):[^@/]*@")


def redact_url(url: str) -> str:
    """``scheme://user:password@host`` with the password replaced (database, Redis URLs)."""
    return _URL_SECRET.sub(lambda m: f"{m['scheme']}{m['user']}:{REDACTED}@", url)


def effective(settings: config.Settings) -> dict[str, Any]:
    """The configuration in force (``APPLIANCE_DATABASE_URL`` applied) with URL passwords
    redacted: for ``appliance config show``."""
    values = settings.config.model_dump(mode="json")
    values["database"]["url"] = redact_url(settings.database_url)
    if values["ocsp"]["redis_url"]:
        values["ocsp"]["redis_url"] = redact_url(values["ocsp"]["redis_url"])
    return values
