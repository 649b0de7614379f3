"""``/1.0/renew``: the Bearer token (x5c header, the certificate in it, the signature by its
key, the claims) as the endpoint reads it before looking the certificate up."""

from __future__ import annotations

from collections.abc import Callable

AUDIENCE = "https://ca.test/1.0/renew"


def load() -> Callable[[bytes], None]:
    from appliance.provisioners import renewal
    from tests.fuzz.verdict import guarded

    def one_input(data: bytes) -> None:
        # Headers reach the app as latin-1 text (WSGI), so every byte string is possible.
        token = data.decode("latin-1")
        guarded(lambda: renewal.certificate_from_token(token, AUDIENCE))

    return one_input


if __name__ == "__main__":
    from tests.fuzz import harness
    harness.run("renew", load)
