"""Loading a ceremony script: bytes kept exactly (the transcript signs their hash)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from appliance import strict_yaml
from appliance.ceremony.schema import Ceremony
from appliance.errors import ConfigError

MAX_SCRIPT_BYTES = 1_000_000


@dataclass(frozen=True)
class LoadedScript:
    path: Path
    raw: bytes
    sha256: str
    ceremony: Ceremony

    def resolve_path(self, value: str) -> Path:
        """Input files named in the script are relative to the script's folder."""
        p = Path(value)
        return p if p.is_absolute() else self.path.parent / p


def load(path: Path) -> LoadedScript:
    try:
        if path.stat().st_size > MAX_SCRIPT_BYTES:
            raise ConfigError(f"{path} is larger than {MAX_SCRIPT_BYTES} bytes")
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read ceremony script {path}: {exc.strerror}") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    ceremony = strict_yaml.parse(text, Ceremony, str(path), "ceremony script")
    return LoadedScript(path.resolve(), raw, hashlib.sha256(raw).hexdigest(), ceremony)
