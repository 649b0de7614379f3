"""Strict YAML documents validated by pydantic models.

Every operator-written file (configuration, HSM profiles, ceremony scripts)
is read the same way: exactly one YAML mapping, safe loader, a key given twice in
one mapping refused (YAML says keys are unique; PyYAML would silently keep the
last, so a second ``service:`` block appended to a generated ``appliance.yaml``
would drop the first), unknown keys refused by the model, and one readable line
per problem.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from appliance.errors import ConfigError

M = TypeVar("M", bound=BaseModel)
MAX_YAML_BYTES = 1_000_000


class _UniqueKeyLoader(yaml.SafeLoader):
    """The safe loader, refusing a mapping that names a key twice."""


_MERGE_TAG = "tag:yaml.org,2002:merge"


def _unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    """The mapping, unless one of its own keys appears twice (a key that overrides one
    brought in by a ``<<`` merge is not a duplicate: that is what merges are for)."""
    seen: set[Any] = set()
    for key_node, _value in node.value:
        if key_node.tag == _MERGE_TAG:
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            duplicate = key in seen
            seen.add(key)
        except TypeError:  # an unhashable key: SafeLoader's own error says so below
            continue
        if duplicate:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping", node.start_mark,
                f"found duplicate key {str(key)[:100]!r}", key_node.start_mark)
    return loader.construct_mapping(node, deep=True)  # resolves the merges


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
                                 _unique_mapping)


def read_text(path: Path, what: str) -> str:
    try:
        if path.stat().st_size > MAX_YAML_BYTES:
            raise ConfigError(f"{what} {path} is larger than {MAX_YAML_BYTES} bytes")
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from exc


def parse(text: str, model: type[M], source: str, what: str) -> M:
    """``text`` as one YAML mapping validated by ``model``, or a ConfigError naming each problem."""
    try:
        docs = list(yaml.load_all(text, Loader=_UniqueKeyLoader))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from exc
    if len(docs) != 1 or not isinstance(docs[0], dict):
        raise ConfigError(f"{source}: expected exactly one YAML mapping")
    try:
        return model.model_validate(docs[0])
    except ValidationError as exc:
        # ``from None``: pydantic's own text quotes input values, which may be a PIN someone
        # wrote in the wrong place; our summary names fields and problems only.
        raise ConfigError(f"{source}: invalid {what}: {summarise(exc)}") from None


def summarise(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or '(top)'}: {err['msg']}" for err in exc.errors()
    )
