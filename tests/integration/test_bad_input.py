"""Bad input answers a 4xx naming the field and changes nothing (issue 11, item 4).

Every case the issue's fuzzing found answering 500, sent to a running ``appliance serve``
(real token, real HTTPS): the REST sign, renew and revoke endpoints and ACME. After each,
nothing was reserved or issued and no issuance was audited. Inputs found later by the fuzz
targets (tests/fuzz/) are added here too.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from tests import bad_csrs
from tests.acme_client import Client, b64, jwk_of, sign
from tests.conftest import run_cli
from tests.service_helpers import Server, serving

NAME = "bad.example.com"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    d = tmp_path_factory.mktemp("badinput") / "data"
    run_cli("quickstart", "--dir", str(d), check=True)
    with serving(d, rate_limit_per_minute=0) as srv:
        yield srv


def _state(server: Server) -> tuple[int, int, int]:
    """Certificate rows (any status), issuance events, and ACME orders: what must not move."""
    with server.db() as conn:
        rows = conn.execute("SELECT COUNT(*) FROM certificates").fetchone()[0]
        orders = conn.execute("SELECT COUNT(*) FROM acme_orders").fetchone()[0]
    issued = len([e for e in server.events() if e["event_type"] in (
        "certificate.issued", "certificate.failed", "certificate.renewed")])
    return rows, issued, orders


def _refused(server: Server, r: requests.Response, status: int, field: str | None,
             before: tuple[int, int, int]) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body: dict[str, Any] = r.json()
    assert body["status"] == status and body["error"]
    if field is not None:
        assert body.get("field") == field, body
        assert body["message"].startswith(f"{field}: "), body
    assert _state(server) == before
    return body


def _post(server: Server, path: str, raw: bytes, **headers: str) -> requests.Response:
    return server.post(path, data=raw, headers={"Content-Type": "application/json",
                                                **headers})


# -- /1.0/sign -------------------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(bad_csrs.cases()))
def test_malformed_csrs_are_400s_naming_csr(server: Server, case: str) -> None:
    before = _state(server)
    r = server.sign(bad_csrs.pem(bad_csrs.cases()[case]), server.token(NAME))
    body = _refused(server, r, 400, "csr", before)
    assert "CSR" in body["message"] or "subjectAltName" in body["message"]


@pytest.mark.parametrize("name", ["0.0", "*.*.example.com", "a..example.com", "-a.example.com"])
def test_sans_no_certificate_may_carry_are_400s(server: Server, name: str) -> None:
    before = _state(server)
    r = server.sign(bad_csrs.good_csr(name), server.token(name))
    body = _refused(server, r, 400, "csr", before)
    assert "subjectAltName dns" in body["message"]


@pytest.mark.parametrize(("field", "value"), [
    ("notBefore", "0001-01-01T00:00:00+01:00"),
    ("notAfter", "9999-12-31T23:59:59-01:00"),
    ("notBefore", "1949-12-31T23:59:59Z"),
    ("notAfter", 20261204),
    ("notBefore", "2026-13-01T00:00:00Z"),
])
def test_times_out_of_range_are_400s(server: Server, field: str, value: Any) -> None:
    before = _state(server)
    r = server.sign(bad_csrs.good_csr(NAME), server.token(NAME), **{field: value})
    _refused(server, r, 400, field, before)


def test_a_far_not_after_is_refused_by_the_maximum_duration(server: Server) -> None:
    before = _state(server)
    r = server.sign(bad_csrs.good_csr(NAME), server.token(NAME), notAfter="5303-01-01T00:00:00Z")
    assert "exceeds the maximum" in _refused(server, r, 400, None, before)["message"]


@pytest.mark.parametrize(("raw", "field"), [
    (b'{"csr": "\\ud800", "ott": "x"}', "csr"),
    (b'{"csr": "x", "ott": "a\\udc00b"}', "ott"),
    (b'{"csr": "x", "ott": "y", "templateData": {"k": ["\\ud83d"]}}', "templateData.k[0]"),
    (b'{"csr": "x", "ott": "y", "\\ud800": 1}', "body: a key"),
    (b'{"csr": "x", "ott": "y", "templateData": {"n": NaN}}', "body"),
    (b'{"csr": "x", "ott": "y", "templateData": {"n": 1e999}}', "templateData.n"),
    (b'{"csr": "x", "ott": "y", "n": 1' + b"0" * 5000 + b"}", "body"),
    (b'{"a":' * 2000 + b"1" + b"}" * 2000, "body"),
    (b"[" * 30000 + b"]" * 30000, "body"),
    (b'{"templateData":' + b'{"a":' * 20 + b"1" + b"}" * 21, None),
    (b"\xff\xfe{}", "body"),
])
def test_bodies_beyond_the_json_bounds_are_400s(server: Server, raw: bytes,
                                                field: str | None) -> None:
    before = _state(server)
    r = _post(server, "/1.0/sign", raw)
    body = _refused(server, r, 400, None, before)
    if field is not None:
        assert body.get("field") == field, body


def test_a_csr_with_a_non_ascii_pem_is_a_400(server: Server) -> None:
    before = _state(server)
    pem = bad_csrs.good_csr(NAME).replace("REQUEST", "REQUÉST")
    _refused(server, server.sign(pem, server.token(NAME)), 400, "csr", before)


@pytest.mark.parametrize("claims", [
    {"exp": "9999999999"}, {"iat": "1"}, {"nbf": [1]}, {"exp": True},
    {"exp": 10 ** 30}, {"iat": -1},
])
def test_token_times_that_are_not_numeric_dates_are_401s(server: Server,
                                                         claims: dict[str, Any]) -> None:
    before = _state(server)
    r = server.sign(bad_csrs.good_csr(NAME), server.token(NAME, **claims))
    body = _refused(server, r, 401, None, before)
    assert "NumericDate" in body["message"] or "invalid token" in body["message"]


@pytest.mark.parametrize("lifetime", [10 ** 20, -5, 0, "3600", 1.5, True])
def test_token_cert_lifetime_out_of_range_is_a_401(server: Server, lifetime: Any) -> None:
    """Checked with the token, before it is spent: a failed login (audited), nothing else."""
    before = _state(server)
    failed = len(server.events("auth.failed"))
    r = server.sign(bad_csrs.good_csr(NAME), server.token(NAME, cert_lifetime=lifetime))
    body = _refused(server, r, 401, None, before)
    assert "cert_lifetime" in body["message"]
    assert len(server.events("auth.failed")) == failed + 1


def test_a_token_with_a_lone_surrogate_subject_is_refused(server: Server) -> None:
    before = _state(server)
    r = server.sign(bad_csrs.good_csr(NAME), server.token(NAME, sub="x\ud800"))
    _refused(server, r, 400, None, before)


def test_the_good_request_still_issues(server: Server) -> None:
    """The baseline the refusals differ from: the same shapes, well-formed, issue."""
    rows, issued, _ = _state(server)
    r = server.sign(bad_csrs.good_csr(NAME), server.token(NAME, cert_lifetime=3600),
                    notAfter=None)
    assert r.status_code == 201, r.text
    assert _state(server)[:2] == (rows + 1, issued + 1)


# -- /1.0/revoke and /1.0/renew --------------------------------------------------------------


@pytest.mark.parametrize(("body", "status"), [
    ({"serial": "zz"}, 400),
    ({"serial": "01", "reasonCode": "²"}, 400),
    ({"serial": "01", "reasonCode": "9" * 4000}, 400),
    ({"serial": "01", "reasonCode": True}, 400),
    ({"serial": "01", "reasonCode": [1]}, 400),
    ({"serial": "01", "ott": 5}, 400),
    ({"serial": "01", "ott": "not.a.token"}, 401),
    ({"serial": "\ud800"}, 400),
    ({"serial": "0" * 100}, 400),
])
def test_bad_revoke_bodies_are_4xx(server: Server, body: dict[str, Any], status: int) -> None:
    before = _state(server)
    raw = json.dumps(body).encode()  # ensure_ascii: lone surrogates go as \\u escapes
    r = _post(server, "/1.0/revoke", raw)
    _refused(server, r, status, None, before)


def _x5c_token(cert_der: bytes, **claims: Any) -> str:
    k = ec.generate_private_key(ec.SECP256R1())
    t = int(time.time())
    payload = {"aud": "x", "iat": t, "nbf": t, "exp": t + 60, "jti": secrets.token_hex(8),
               **claims}
    return jwt.encode(payload, k, algorithm="ES256",
                      headers={"x5c": [base64.b64encode(cert_der).decode()]})


@pytest.mark.parametrize("bearer", [
    "x", "a.b.c", "\u00e9" * 10,
    _x5c_token(b"\x30\x03\x02\x01\x00"),
    _x5c_token(bad_csrs.cases()["unknown_key_oid"]),
    jwt.encode({"a": 1}, "k" * 32, algorithm="HS256", headers={"x5c": "nope"}),
    jwt.encode({"a": 1}, "k" * 32, algorithm="HS256", headers={"x5c": [5]}),
])
def test_bad_renewal_tokens_are_401s(server: Server, bearer: str) -> None:
    before = _state(server)
    r = server.post("/1.0/renew", headers={"Authorization": f"Bearer {bearer}"})
    _refused(server, r, 401, None, before)


# -- ACME ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def acme(server: Server) -> Client:
    c = Client(f"{server.api}/acme/acme/directory", server.roots)
    assert c.register().status_code == 201
    return c


def _problem(server: Server, r: requests.Response, kind: str,
             before: tuple[int, int, int]) -> dict[str, Any]:
    assert 400 <= r.status_code < 500, r.text
    assert r.headers["Content-Type"].startswith("application/problem+json")
    doc: dict[str, Any] = r.json()
    assert doc["type"] == f"urn:ietf:params:acme:error:{kind}", doc
    assert _state(server) == before
    return doc


def _raw_jws(c: Client, url: str, payload_raw: bytes, protected: dict[str, Any] | None = None,
             key: ec.EllipticCurvePrivateKey | None = None) -> requests.Response:
    k = key or c.key
    prot = protected or {"alg": "ES256", "url": url, "nonce": c.new_nonce(), "kid": c.kid}
    p64, body = b64(json.dumps(prot).encode()), b64(payload_raw)
    r_, s_ = decode_dss_signature(k.sign(f"{p64}.{body}".encode(), ec.ECDSA(hashes.SHA256())))
    env = {"protected": p64, "payload": body,
           "signature": b64(r_.to_bytes(32, "big") + s_.to_bytes(32, "big"))}
    return c.session.post(url, data=json.dumps(env),
                          headers={"Content-Type": "application/jose+json"},
                          verify=str(c.ca_file), timeout=60)


def test_acme_deeply_nested_body_is_malformed(server: Server, acme: Client) -> None:
    before = _state(server)
    for raw in (b"[" * 30000 + b"]" * 30000, b'{"protected":' * 5000 + b"1" + b"}" * 5000):
        r = acme.session.post(acme.dir["newOrder"], data=raw,
                              headers={"Content-Type": "application/jose+json"},
                              verify=str(acme.ca_file), timeout=60)
        _problem(server, r, "malformed", before)


@pytest.mark.parametrize("jwk_change", [
    {"x": 12345}, {"y": None}, {"x": ["a"]}, {"crv": 5}, {"kty": "RSA", "n": 1, "e": "AQAB"},
])
def test_acme_bad_jwks_are_malformed(server: Server, acme: Client,
                                     jwk_change: dict[str, Any]) -> None:
    before = _state(server)
    k = ec.generate_private_key(ec.SECP256R1())
    jwk: dict[str, Any] = {**jwk_of(k), **jwk_change}
    jwk = {key: v for key, v in jwk.items() if v is not None}
    url = acme.dir["newAccount"]
    r = _raw_jws(acme, url, b'{"termsOfServiceAgreed": true}',
                 {"alg": "ES256", "url": url, "nonce": acme.new_nonce(), "jwk": jwk}, key=k)
    _problem(server, r, "malformed", before)


@pytest.mark.parametrize("payload", [
    b'{"identifiers": [{"type": "dns", "value": "a\\ud800.test"}]}',
    b'{"identifiers": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    b'{"identifiers": [{"type": "dns", "value": "x.test"}], "notAfter": "0001-01-01T00:00'
    b':00+01:00"}',
])
def test_acme_bad_payloads_are_malformed(server: Server, acme: Client, payload: bytes) -> None:
    before = _state(server)
    _problem(server, _raw_jws(acme, acme.dir["newOrder"], payload), "malformed", before)


@pytest.mark.parametrize("name", ["bücher.example", "пример.test", "*.bücher.example"])
def test_acme_u_label_identifiers_are_rejected(server: Server, acme: Client, name: str) -> None:
    before = _state(server)
    doc = _problem(server, acme.order(("dns", name)), "rejectedIdentifier", before)
    assert "A-label" in doc["detail"]
    assert doc["subproblems"][0]["type"].endswith(":malformed")


def test_acme_a_label_identifier_is_accepted(server: Server, acme: Client) -> None:
    r = acme.order(("dns", "xn--bcher-kva.example"))
    assert r.status_code == 201, r.text
    assert r.json()["identifiers"] == [{"type": "dns", "value": "xn--bcher-kva.example"}]


@pytest.mark.parametrize("old_key", [
    "garbage", 5, {"kty": "EC", "crv": "P-256", "x": "AAAA", "y": "AAAA"},
    {"kty": "EC", "crv": "P-256", "x": 1, "y": 2}, {"kty": "EC"}, [],
])
def test_acme_key_change_with_garbage_old_key_is_malformed(server: Server, acme: Client,
                                                           old_key: Any) -> None:
    before = _state(server)
    new_key = ec.generate_private_key(ec.SECP256R1())
    inner = sign(new_key, {"alg": "ES256", "url": acme.dir["keyChange"], "jwk": jwk_of(new_key)},
                 {"account": acme.kid, "oldKey": old_key})
    _problem(server, acme.post(acme.dir["keyChange"], inner), "malformed", before)


@pytest.mark.parametrize("case", ["duplicate_san", "malformed_san", "version_63",
                                  "malformed_ec_point", "non_ia5_dns_name"])
def test_acme_finalize_reads_the_whole_csr_first(server: Server, acme: Client,
                                                 case: str) -> None:
    """The CSR is read before the order is looked at: a bad one is badCSR even for an order
    that is not ready yet, and the order is left as it was."""
    r = acme.order(("dns", NAME))
    assert r.status_code == 201, r.text
    order = r.json()
    before = _state(server)
    r = acme.post(order["finalize"], {"csr": b64(bad_csrs.cases()[case])})
    _problem(server, r, "badCSR", before)
    assert acme.post(r.url.rsplit("/", 1)[0], None).json()["status"] == "pending"


def test_no_request_above_answered_500(server: Server) -> None:
    text = server.log.read_text(errors="replace")
    assert "unexpected error" not in text, text[-4000:]

