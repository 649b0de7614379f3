"""``/1.0/revoke``: the body (bounded JSON, serial, reason, ott) as the endpoint reads it."""

from __future__ import annotations

from collections.abc import Callable


def load() -> Callable[[bytes], None]:
    from appliance.web import api
    from tests.fuzz.verdict import guarded

    def one_input(data: bytes) -> None:
        guarded(lambda: api.parse_revoke_body(data))

    return one_input


if __name__ == "__main__":
    from tests.fuzz import harness
    harness.run("revoke", load)
