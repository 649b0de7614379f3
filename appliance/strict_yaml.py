"""Strict YAML documents validated by pydantic models.

Every operator-written file (configuration, HSM profiles, ceremony scripts)
is read the same way: exactly one YAML mapping, safe loader, unknown keys
refused by the model, and one readable line per problem.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from appliance.errors import ConfigError

M = TypeVar("M", bound=BaseModel)
MAX_YAML_BYTES = 1_000_000


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
        docs = list(yaml.safe_load_all(text))
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
