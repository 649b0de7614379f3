"""Ceremony scripts: strict YAML into the ceremony schema (as ``ceremony run`` loads them)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable


def load() -> Callable[[bytes], None]:
    from appliance import strict_yaml
    from appliance.ceremony.schema import Ceremony
    from appliance.errors import ConfigError

    def one_input(data: bytes) -> None:
        if len(data) > 100_000:
            return
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            return  # ceremony.script.load refuses these before YAML
        with contextlib.suppress(ConfigError):
            strict_yaml.parse(text, Ceremony, "fuzz.yaml", "ceremony script")

    return one_input


if __name__ == "__main__":
    from tests.fuzz import harness
    harness.run("ceremony", load)
