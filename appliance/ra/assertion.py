"""Hop assertions: what each registration authority on a path says about one request.

An RA forwards a request upstream over mutual TLS; TLS proves which RA is the direct child,
but not what a grandchild asked or whom it authenticated. So every hop signs a compact JWS
(``typ: ra-hop+jwt``) with its credential key IN ITS TOKEN, naming the operation, a digest
of the exact subject (CSR, certificate, serial), the names, the validity asked at that hop,
whom it authenticated and through which provisioner, and the assertion of the hop below,
verbatim (``below``). The CA verifies each layer with the key of the RA registered for it
(``ra/path.py``) and so sees the whole path, signed end to end, without trusting the
middle hops to relay it honestly.

Algorithms are the table's (``x509/algorithms.py``, purpose ``ra``): ES256 for a P-256
credential, ES384 for P-384. Everything read is bounded before it is parsed: a token,
nested ones included, is at most :data:`MAX_TOKEN_BYTES` (what a JSON string of a request
body may hold), each hop's own claims at most :data:`MAX_HOP_BYTES`, at most
:data:`MAX_DEPTH` hops deep, and its JSON is read by ``bounded_json``. (A nested JWS grows
by a third per hop, so 16 KiB for the whole path would not hold eight hops; 16 KiB is the
bound of each hop's own claims.) Any flaw is a :class:`HopAssertionError`
(401 ``ra_assertion_invalid``): the child is not authenticated.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import secrets
import time
from dataclasses import dataclass, field, replace
from typing import Any, Literal, cast, get_args

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from appliance import bounded_json
from appliance.errors import ApplianceError, KeyPolicyError
from appliance.policy import Names
from appliance.ra.errors import HopAssertionError
from appliance.revocation.revoke import normalise_serial
from appliance.x509 import algorithms

Op = Literal["sign", "renew", "revoke", "register", "credential-renew"]
OPS: tuple[str, ...] = get_args(Op)
TYP = "ra-hop+jwt"
LIFETIME = 300  # seconds from iat to exp: one forward, with its retries, fits
LEEWAY = 60  # clock skew accepted between nodes
MAX_TOKEN_BYTES = 65_536  # one token, its nested ``below`` assertions included
MAX_HOP_BYTES = 16_384  # one hop's own claims (JSON, without ``below``)
MAX_DEPTH = 8  # hops on one path, the signer's included
MAX_NAMES = 128  # a CSR carries at most 100 SANs plus its CN
MAX_NAME_CHARS = 1024
MAX_REQUESTER_CHARS = 256
MAX_SHORT_CHARS = 128  # names of RAs and provisioners, types, reasons, durations, jti
MAX_POLICY_CHARS = 4096
MAX_NUMERIC_DATE = 253_402_300_799  # 9999-12-31T23:59:59Z
RA_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_B64URL43 = re.compile(r"[A-Za-z0-9_-]{43}")
_CLAIMS = frozenset({"iss", "op", "iat", "exp", "jti", "subject_sha256", "names",
                     "not_before", "not_after", "lifetime", "requester", "provisioner",
                     "reason", "register", "below"})


@dataclass(frozen=True)
class Hop:
    """One hop's claims. ``iat``, ``exp``, ``jti``, ``x5t`` (the header's ``x5t#S256``) and
    ``alg`` are filled when a token is made or read; a Hop built to be signed leaves them
    ``None``.

    ``provisioner`` is ``{"name", "type"}``; ``register`` (op ``register`` only) is
    ``{"name", "max_duration", "policy"}``; ``below`` is the lower hop's compact token."""

    iss: str
    op: Op
    subject_sha256: str
    requester: str
    provisioner: dict[str, str]
    names: tuple[str, ...] = ()
    not_before: int | None = None
    not_after: int | None = None
    lifetime: int | None = None
    reason: str | None = None
    register: dict[str, str | None] | None = None
    below: str | None = None
    iat: int | None = field(default=None, compare=False)
    exp: int | None = field(default=None, compare=False)
    jti: str | None = field(default=None, compare=False)
    x5t: str | None = field(default=None, compare=False)
    alg: str | None = field(default=None, compare=False)

    def claims(self) -> dict[str, Any]:
        """The JWT payload (``iat``, ``exp``, ``jti`` as set)."""
        return {"iss": self.iss, "op": self.op, "iat": self.iat, "exp": self.exp,
                "jti": self.jti, "subject_sha256": self.subject_sha256,
                "names": list(self.names), "not_before": self.not_before,
                "not_after": self.not_after, "lifetime": self.lifetime,
                "requester": self.requester, "provisioner": dict(self.provisioner),
                "reason": self.reason,
                "register": dict(self.register) if self.register is not None else None,
                "below": self.below}


# -- what a hop signs over ---------------------------------------------------------------

def digest(data: bytes) -> str:
    """``subject_sha256``: lower-case hex SHA-256 of a CSR's or certificate's DER."""
    return hashlib.sha256(data).hexdigest()


def serial_digest(serial: str | int) -> str:
    """``subject_sha256`` of a revocation: the digest of the serial as stored (lower-case
    hex, no leading zeros), so every hop and the CA hash the same text."""
    try:
        return digest(normalise_serial(serial).encode("ascii"))
    except ApplianceError as exc:
        raise HopAssertionError(str(exc)) from None


def normalise_names(names: list[str] | tuple[str, ...] | set[str]) -> tuple[str, ...]:
    """``names`` as a hop carries them: lower-case, each once, sorted."""
    return tuple(sorted({n.lower() for n in names}))


def names_of(item: x509.CertificateSigningRequest | x509.Certificate) -> tuple[str, ...]:
    """The names of a CSR or certificate as a hop carries them (SANs and CN): each hop and
    the CA compute them alike, so a mismatch means the request was changed on the way."""
    try:
        if isinstance(item, x509.Certificate):
            parsed = Names.from_certificate(item)
        else:
            parsed = Names.from_csr(item)
    except ValueError as exc:
        raise HopAssertionError(f"the names cannot be read: {exc}") from None
    values = [*parsed.dns, *(str(i) for i in parsed.ip), *parsed.email, *parsed.uri]
    if parsed.cn:
        values.append(parsed.cn)
    return normalise_names(values)


# -- signing -----------------------------------------------------------------------------

def x5t_of(cert: x509.Certificate) -> str:
    """The header's ``x5t#S256``: base64url SHA-256 of the certificate's DER. A verifier
    may compare it with the credential it holds for ``iss`` (:attr:`Hop.x5t`)."""
    der = cert.public_bytes(serialization.Encoding.DER)
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()


def _spki(key: ec.EllipticCurvePublicKey | Any) -> bytes:
    der: bytes = key.public_bytes(serialization.Encoding.DER,
                                  serialization.PublicFormat.SubjectPublicKeyInfo)
    return der


def _alg_of(key: object) -> str:
    """The JWS algorithm of an EC key, if the table approves it for hop assertions."""
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise HopAssertionError("an RA credential key must be an EC key")
    alg = algorithms.JWS_ALG_OF_CURVE.get(key.curve.name)
    if alg is None or not algorithms.jws_alg_allowed(alg, "ra"):
        raise HopAssertionError(algorithms.refusal_text(
            f"curve {key.curve.name} is not accepted for RA credentials",
            f"hop assertion algorithm {alg or key.curve.name}",
            algorithms.one_of(algorithms.jws_algs("ra"))))
    return alg


def make(key: ec.EllipticCurvePrivateKey, cert: x509.Certificate, hop: Hop, *,
         now: float | None = None) -> str:
    """The compact JWS of ``hop``, signed by ``key`` (the RA's credential key: a
    ``TokenECPrivateKey``, so the signature is made in the token). ``cert`` is the RA's
    credential certificate, named by its ``x5t#S256``. ``iat``/``exp``/``jti`` are set
    here. The claims are checked as :func:`verify` checks them, so a node never sends an
    assertion its upstream must refuse."""
    if _spki(cert.public_key()) != _spki(key.public_key()):
        raise KeyPolicyError("the RA credential certificate is not for the credential key")
    alg = _alg_of(key.public_key())
    iat = int(time.time() if now is None else now)
    signed = replace(hop, names=normalise_names(hop.names), iat=iat, exp=iat + LIFETIME,
                     jti=secrets.token_urlsafe(18))
    _check(signed.claims(), depth=1)
    token = jwt.encode(signed.claims(), cast(Any, key), algorithm=alg,
                       headers={"typ": TYP, "x5t#S256": x5t_of(cert)})
    if len(token) > MAX_TOKEN_BYTES:
        raise HopAssertionError(f"the hop assertion would be {len(token)} bytes; at most "
                                f"{MAX_TOKEN_BYTES} with the hops below (too many names or "
                                "hops)")
    return token


# -- reading -----------------------------------------------------------------------------

def _b64json(part: str, what: str) -> dict[str, Any]:
    try:
        raw = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except (binascii.Error, ValueError):
        raise HopAssertionError(f"hop assertion {what} is not base64url") from None
    try:
        doc = bounded_json.loads(raw, f"hop assertion {what}", max_bytes=MAX_TOKEN_BYTES,
                                 max_depth=4)
    except ApplianceError as exc:
        raise HopAssertionError(str(exc)) from None
    if not isinstance(doc, dict):
        raise HopAssertionError(f"hop assertion {what} is not a JSON object")
    return doc


def _split(token: object) -> tuple[dict[str, Any], dict[str, Any]]:
    if not isinstance(token, str) or not token:
        raise HopAssertionError("the hop assertion must be a compact JWS string")
    if len(token) > MAX_TOKEN_BYTES:
        raise HopAssertionError(f"the hop assertion is larger than {MAX_TOKEN_BYTES} bytes")
    parts = token.split(".")
    if len(parts) != 3 or not all(parts):
        raise HopAssertionError("the hop assertion is not a compact JWS (three parts)")
    header = _b64json(parts[0], "header")
    if header.get("typ") != TYP:
        raise HopAssertionError(f"the hop assertion's typ must be {TYP!r}")
    if not isinstance(header.get("alg"), str):
        raise HopAssertionError("the hop assertion names no algorithm")
    x5t = header.get("x5t#S256")
    if not isinstance(x5t, str) or not _B64URL43.fullmatch(x5t):
        raise HopAssertionError("the hop assertion's x5t#S256 is missing or malformed")
    if set(header) - {"alg", "typ", "x5t#S256"}:
        raise HopAssertionError("the hop assertion's header has unknown members")
    return header, _b64json(parts[1], "payload")


def _text(claims: dict[str, Any], name: str, limit: int, *, optional: bool = False) -> Any:
    value = claims.get(name)
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value or len(value) > limit:
        raise HopAssertionError(f"hop assertion claim {name!r} must be a string of 1 to "
                                f"{limit} characters")
    return value


def _number(claims: dict[str, Any], name: str, *, optional: bool = False,
            positive: bool = False) -> Any:
    value = claims.get(name)
    if value is None and optional:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or \
            not (1 if positive else 0) <= value <= MAX_NUMERIC_DATE:
        raise HopAssertionError(f"hop assertion claim {name!r} must be a whole number of "
                                "seconds" + (" or null" if optional else ""))
    return value


def _check(claims: dict[str, Any], depth: int) -> Hop:
    """The claims as a :class:`Hop`, every field typed and bounded; ``below`` read too
    (structure only) so the whole path is bounded before anything is verified."""
    if set(claims) != _CLAIMS:
        missing, extra = sorted(_CLAIMS - set(claims)), sorted(set(claims) - _CLAIMS)
        raise HopAssertionError("hop assertion claims do not match the protocol"
                                + (f"; missing {', '.join(missing)}" if missing else "")
                                + (f"; unknown {', '.join(extra)}" if extra else ""))
    own = len(json.dumps({k: v for k, v in claims.items() if k != "below"},
                         separators=(",", ":")))
    if own > MAX_HOP_BYTES:
        raise HopAssertionError(f"a hop's own claims are {own} bytes; at most {MAX_HOP_BYTES} "
                                "(too many or too long names)")
    iss = _text(claims, "iss", 64)
    if not RA_NAME.fullmatch(iss):
        raise HopAssertionError("hop assertion claim 'iss' is not an RA name")
    op = claims["op"]
    if op not in OPS:
        raise HopAssertionError(f"hop assertion claim 'op' must be one of {', '.join(OPS)}")
    subject = claims["subject_sha256"]
    if not isinstance(subject, str) or not _HEX64.fullmatch(subject):
        raise HopAssertionError("hop assertion claim 'subject_sha256' must be 64 lower-case "
                                "hex digits")
    names = claims["names"]
    if not isinstance(names, list) or len(names) > MAX_NAMES or not all(
            isinstance(n, str) and 0 < len(n) <= MAX_NAME_CHARS for n in names):
        raise HopAssertionError(f"hop assertion claim 'names' must be a list of at most "
                                f"{MAX_NAMES} names")
    if tuple(names) != normalise_names(names):
        raise HopAssertionError("hop assertion claim 'names' must be lower-case, sorted, "
                                "each once")
    if op == "revoke" and names:
        raise HopAssertionError("a revoke hop assertion carries no names")
    provisioner = claims["provisioner"]
    if not isinstance(provisioner, dict) or set(provisioner) != {"name", "type"}:
        raise HopAssertionError("hop assertion claim 'provisioner' must be {name, type}")
    _text(provisioner, "name", MAX_SHORT_CHARS)
    _text(provisioner, "type", MAX_SHORT_CHARS)
    register = claims["register"]
    if op == "register":
        if not isinstance(register, dict) or set(register) != {"name", "max_duration",
                                                                "policy"}:
            raise HopAssertionError("a register hop assertion needs 'register': {name, "
                                    "max_duration, policy}")
        if not RA_NAME.fullmatch(_text(register, "name", 64)):
            raise HopAssertionError("hop assertion 'register.name' is not an RA name")
        _text(register, "max_duration", MAX_SHORT_CHARS, optional=True)
        _text(register, "policy", MAX_POLICY_CHARS, optional=True)
    elif register is not None:
        raise HopAssertionError("only a register hop assertion carries 'register'")
    reason = _text(claims, "reason", MAX_SHORT_CHARS, optional=True)
    if reason is not None and op != "revoke":
        raise HopAssertionError("only a revoke hop assertion carries a 'reason'")
    below = claims["below"]
    if below is not None:
        if depth >= MAX_DEPTH:
            raise HopAssertionError(f"the RA path is deeper than {MAX_DEPTH} hops")
        if not isinstance(below, str):
            raise HopAssertionError("hop assertion claim 'below' must be a compact JWS")
        _read(below, depth + 1)
    iat, exp = _number(claims, "iat", positive=True), _number(claims, "exp", positive=True)
    if not 0 < exp - iat <= LIFETIME:
        raise HopAssertionError(f"a hop assertion is valid for at most {LIFETIME} seconds")
    return Hop(iss=iss, op=op, subject_sha256=subject,
               requester=_text(claims, "requester", MAX_REQUESTER_CHARS),
               provisioner=dict(provisioner), names=tuple(names),
               not_before=_number(claims, "not_before", optional=True),
               not_after=_number(claims, "not_after", optional=True),
               lifetime=_number(claims, "lifetime", optional=True, positive=True),
               reason=reason, register=dict(register) if register is not None else None,
               below=below, iat=iat, exp=exp,
               jti=_text(claims, "jti", MAX_SHORT_CHARS))


def _read(token: object, depth: int) -> Hop:
    header, claims = _split(token)
    hop = _check(claims, depth)
    return replace(hop, x5t=header["x5t#S256"], alg=header["alg"])


def peek(token: object) -> Hop:
    """The hop ``token`` claims, NOT verified: to find which RA signed it (``iss``,
    ``x5t``) before its key is looked up. Bounded and typed like :func:`verify`, the
    nested ``below`` tokens included (at most :data:`MAX_DEPTH` hops)."""
    return _read(token, 1)


def verify(token: object, public_key: object, *, iss: str, op: str, subject_sha256: str,
           now: float | None = None) -> Hop:
    """The hop ``token`` asserts, once its signature verifies with ``public_key`` (the
    registered RA's credential key) under the table's algorithm for that key, it is within
    its time (60 s leeway), and it is by ``iss``, for ``op`` and for ``subject_sha256``.
    ``below`` is only read here; the CA verifies each lower hop with its own RA's key."""
    hop = peek(token)
    alg = _alg_of(public_key)
    if hop.alg != alg:
        raise HopAssertionError(algorithms.refusal_text(
            f"hop assertion algorithm {hop.alg!r} does not fit the RA's key ({alg})",
            f"hop assertion algorithm {hop.alg!r}", alg))
    try:
        jwt.PyJWS().decode(cast(str, token), cast(Any, public_key), algorithms=[alg])
    except jwt.PyJWTError:
        raise HopAssertionError("the hop assertion's signature does not verify with the "
                                f"credential of RA {iss!r}") from None
    moment = time.time() if now is None else now
    assert hop.iat is not None and hop.exp is not None  # set by peek
    if hop.iat > moment + LEEWAY:
        raise HopAssertionError("the hop assertion was issued in the future")
    if hop.exp < moment - LEEWAY:
        raise HopAssertionError("the hop assertion has expired")
    if hop.iss != iss:
        raise HopAssertionError(f"the hop assertion is by {hop.iss!r}, not {iss!r}")
    if hop.op != op:
        raise HopAssertionError(f"the hop assertion is for {hop.op!r}, not {op!r}")
    if hop.subject_sha256 != subject_sha256:
        raise HopAssertionError(f"the hop assertion is for another {op} subject than the "
                                "one sent")
    return hop
