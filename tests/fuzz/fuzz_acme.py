"""ACME: the flattened JWS (envelope, protected header, JWK, signature), then the payload as
each resource reads it (newAccount contacts and EAB binding, newOrder identifiers and times,
keyChange's inner JWS and oldKey, finalize's CSR against the order's identifiers), and the
renewalInfo certID. The JWS signature is checked but its outcome does not stop the payload
parsing (a fuzzer cannot sign), so every payload path is reached.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def load() -> Callable[[bytes], None]:
    from appliance.acme import ari, eab, jws
    from appliance.acme import service as acme_service
    from appliance.acme.identifiers import parse_list
    from appliance.acme.problems import AcmeProblem
    from appliance.issuance.csr import load_csr
    from tests.fuzz.verdict import guarded

    def payload_paths(payload: dict[str, Any]) -> None:
        for call in (
            lambda: acme_service._contacts(payload.get("contact", [])),
            lambda: eab.binding_key_id(payload["externalAccountBinding"])
            if "externalAccountBinding" in payload else None,
            lambda: acme_service._time(payload.get("notBefore"), "notBefore"),
            lambda: acme_service._time(payload.get("notAfter"), "notAfter"),
            lambda: key_change(payload),
            lambda: finalize(payload),
            lambda: ari.parse_cert_id(payload.get("replaces", "a.b")),
        ):
            guarded(call)

    def key_change(payload: dict[str, Any]) -> None:
        inner = jws.parse(payload, "keyChange inner")
        if "jwk" in inner.protected:
            new = jws.load_jwk(inner.protected["jwk"])
            guarded(lambda: jws.check_signature(inner, new))
        body = jws.payload_json(inner.payload, "the inner payload")
        if isinstance(body, dict):
            jws.thumbprint(jws.load_jwk(body.get("oldKey")))

    def finalize(payload: dict[str, Any]) -> None:
        idents = parse_list(payload.get("identifiers"))
        csr = load_csr(jws.b64decode(payload.get("csr"), "csr"))
        acme_service._check_csr_names(csr, idents)

    def one_input(data: bytes) -> None:
        def call() -> None:
            env = jws.parse(jws.read_body(data))
            p = env.protected
            if "jwk" in p:
                key = jws.load_jwk(p["jwk"])
                jws.thumbprint(key)
                guarded(lambda: jws.check_signature(env, key))
            try:
                verified = jws.Verified(env, None, p.get("kid"))  # type: ignore[arg-type]
                payload = verified.json()
            except AcmeProblem as exc:
                if exc.status >= 500:
                    raise
                return
            payload_paths(payload)

        guarded(call)

    return one_input


if __name__ == "__main__":
    from tests.fuzz import harness
    harness.run("acme", load)
