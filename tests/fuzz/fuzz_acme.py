"""ACME: the flattened JWS (envelope, protected header, JWK, signature), then the payload as
each resource reads it (newAccount contacts and EAB binding, newOrder identifiers and times,
keyChange's inner JWS and oldKey, finalize's identifiers and CSR), and the
renewalInfo certID. The JWS signature is checked but its outcome does not stop the payload
parsing (a fuzzer cannot sign), so every payload path is reached.

The first input byte picks what the rest is: 0 the request body as sent; 1 the payload's
JSON, 2 the protected header's JSON, 3 a finalize CSR in DER (each put into an envelope
here, so the mutations land in the JSON or DER rather than in its base64).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def load() -> Callable[[bytes], None]:
    from cryptography.hazmat.primitives.asymmetric import ec

    from appliance import policy
    from appliance.acme import accounts, ari, eab, jws, orders
    from appliance.acme import finalize as acme_finalize
    from appliance.acme.identifiers import parse_list
    from appliance.acme.problems import AcmeProblem
    from appliance.issuance import pipeline
    from appliance.issuance.csr import load_csr
    from tests.acme_client import jwk_of
    from tests.fuzz.verdict import guarded

    def payload_paths(payload: dict[str, Any]) -> None:
        for call in (
            lambda: accounts.contacts(payload.get("contact", [])),
            lambda: eab.binding_key_id(payload["externalAccountBinding"])
            if "externalAccountBinding" in payload else None,
            lambda: orders.parse_time(payload.get("notBefore"), "notBefore"),
            lambda: orders.parse_time(payload.get("notAfter"), "notAfter"),
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
        acme_finalize.check_identifier_kinds(csr)
        # the order's identifiers as the credential's names, as finalize hands them over
        pipeline._check_names_match(policy.Names.from_csr(csr), [i.value for i in idents])

    import json

    k = ec.generate_private_key(ec.SECP256R1())
    header = {"alg": "ES256", "url": "https://ca.test/acme/acme/new-order", "nonce": "n",
              "jwk": jwk_of(k)}

    def envelope(protected: bytes, payload: bytes) -> bytes:
        return json.dumps({"protected": jws.b64encode(protected),
                           "payload": jws.b64encode(payload), "signature": "AAAA"}).encode()

    def one_input(data: bytes) -> None:
        if not data:
            return
        mode, rest = data[0] % 4, data[1:]
        if mode == 1:
            data = envelope(json.dumps(header).encode(), rest)
        elif mode == 2:
            data = envelope(rest, b'{"identifiers": [{"type": "dns", "value": "a.test"}]}')
        elif mode == 3:
            data = envelope(json.dumps(header).encode(), json.dumps({
                "csr": jws.b64encode(rest),
                "identifiers": [{"type": "dns", "value": "a.test"}]}).encode())
        else:
            data = rest

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
