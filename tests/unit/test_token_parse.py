"""``tokens.unverified_issuer`` reads the common token shape itself (issue 16: PyJWT's
unverified decode cost a third of a token check); for every token it must say what PyJWT's
unverified decode says: the same issuer, or a refusal where PyJWT refuses."""

from __future__ import annotations

import base64
import json

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from appliance.provisioners import tokens
from appliance.provisioners.tokens import TokenError

KEY = ec.generate_private_key(ec.SECP256R1())
GOOD = tokens.mint(KEY, provisioner="admin", audience="https://ca/1.0/sign", sans=["a.test"])


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _token(header: object, payload: object, signature: str = "c2ln") -> str:
    return ".".join([_b64(json.dumps(header).encode()), _b64(json.dumps(payload).encode()),
                     signature])


def _pyjwt(token: str) -> str:
    """What the check said before: PyJWT's unverified decode, then the issuer rule."""
    if len(token) > tokens.MAX_TOKEN_BYTES:
        raise TokenError("token too large")
    try:
        iss = jwt.decode(token, options={"verify_signature": False}).get("iss")
    except jwt.PyJWTError as exc:
        raise TokenError(f"malformed token: {exc}") from None
    if not isinstance(iss, str) or not iss:
        raise TokenError("token has no issuer")
    return iss


h, p, s = GOOD.split(".")
CASES = [
    GOOD,
    f"{h}.{p}.{s}=",  # padding PyJWT accepts
    f"{h}=.{p}.{s}",
    f"{h}.{p}",  # two segments
    f"{h}.{p}.{s}.x",
    f"{h}.{p}.",  # empty signature
    f"{h}.{p[:-1]}.{s}",  # truncated payload
    f"{h}.{p[:-1]}{'B' if p[-1] != 'B' else 'C'}.{s}",  # non-canonical last character
    f"{h}.{p}!.{s}",  # outside the alphabet
    f"{h}.é{p}.{s}",  # not ASCII
    _token({"alg": "ES256", "crit": ["exp"]}, {"iss": "admin"}),
    _token({"alg": "ES256", "crit": "x"}, {"iss": "admin"}),
    _token({"alg": "ES256", "kid": 7}, {"iss": "admin"}),
    _token({"alg": "ES256", "b64": False}, {"iss": "admin"}),
    _token([1, 2], {"iss": "admin"}),
    _token({"alg": "ES256"}, ["iss", "admin"]),
    _token({"alg": "ES256"}, {"iss": 5}),
    _token({"alg": "ES256"}, {"iss": ""}),
    _token({"alg": "ES256"}, {"sub": "x"}),
    _token({"alg": "none"}, {"iss": "other"}),
    ".".join([_b64(b"{not json"), p, s]),
    ".".join([h, _b64(b'{"iss": "a", "iss": "b"}'), s]),  # duplicate keys: json's last wins
    "",
    "a.b.c",
    "x" * (tokens.MAX_TOKEN_BYTES + 1),
]


@pytest.mark.parametrize("token", CASES)
def test_same_answer_as_pyjwt(token: str) -> None:
    try:
        expected: str | None = _pyjwt(token)
        refusal = None
    except TokenError as exc:
        expected, refusal = None, str(exc)
    if refusal is None:
        assert tokens.unverified_issuer(token) == expected
    else:
        with pytest.raises(TokenError) as got:
            tokens.unverified_issuer(token)
        assert str(got.value) == refusal


def test_the_common_shape_is_read_without_pyjwt(monkeypatch: pytest.MonkeyPatch) -> None:
    """The shape ``mint`` writes takes the fast path (so the test above compares it)."""
    def refuse(*_a: object, **_k: object) -> None:
        raise AssertionError("PyJWT was asked")

    monkeypatch.setattr(tokens.jwt, "decode", refuse)
    assert tokens.unverified_issuer(GOOD) == "admin"
