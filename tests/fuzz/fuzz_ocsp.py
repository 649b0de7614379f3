"""OCSP requests: the DER request parser (POST bodies) and the GET path decoder."""

from __future__ import annotations

import contextlib
from collections.abc import Callable


def load() -> Callable[[bytes], None]:
    from appliance.ocsp.request import MalformedRequest, first_cert_id
    from appliance.ocsp.responder import decode_get

    def one_input(data: bytes) -> None:
        with contextlib.suppress(MalformedRequest):
            first_cert_id(data)
        path = "/ocsp/" + data.decode("latin-1")
        for fast in (True, False):
            der = decode_get(path, fast=fast)
            if der is not None:
                with contextlib.suppress(MalformedRequest):
                    first_cert_id(der)

    return one_input


if __name__ == "__main__":
    from tests.fuzz import harness
    harness.run("ocsp", load)
