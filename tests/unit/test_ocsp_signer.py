"""The pre-signer's release check (appliance.ocsp.signer.check_released): a response
leaves only if it carries exactly the TBS bytes and signature the token key verified.
The token keys themselves are exercised against SoftHSM in tests/integration."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import NameOID

from appliance.errors import SignatureCheckError
from appliance.ocsp.signer import WitnessKey, check_released


class _Recorder(ec.EllipticCurvePrivateKey):
    """A software key that records what it signed, as the token witness keys do."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.last: tuple[bytes, bytes] | None = None

    def witnessed(self) -> tuple[bytes, bytes] | None:
        found, self.last = self.last, None
        return found

    def sign(self, data: Any, signature_algorithm: Any) -> bytes:
        sig = self.key.sign(data, signature_algorithm)
        self.last = (bytes(data), sig)
        return sig

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self.key.public_key()

    @property
    def curve(self) -> ec.EllipticCurve:
        return self.key.curve

    @property
    def key_size(self) -> int:
        return self.key.key_size

    def exchange(self, algorithm: Any, peer_public_key: Any) -> bytes:
        raise NotImplementedError

    def private_numbers(self) -> Any:
        raise NotImplementedError

    def private_bytes(self, *args: Any) -> bytes:
        raise NotImplementedError

    def __copy__(self) -> _Recorder:
        return self

    def __deepcopy__(self, memo: Any) -> _Recorder:
        return self


def _response(key: _Recorder) -> ocsp.OCSPResponse:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "responder")])
    now = datetime.now(UTC).replace(microsecond=0)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1).not_valid_before(now)
            .not_valid_after(now + timedelta(days=1)).sign(key.key, hashes.SHA256()))
    return (ocsp.OCSPResponseBuilder()
            .add_response_by_hash(b"n" * 20, b"k" * 20, 5, hashes.SHA1(),
                                  ocsp.OCSPCertStatus.GOOD, now, now + timedelta(days=1),
                                  None, None)
            .responder_id(ocsp.OCSPResponderEncoding.HASH, cert)
            .sign(key, hashes.SHA256()))


def test_a_response_with_the_verified_pair_is_released() -> None:
    key = _Recorder()
    resp = _response(key)
    check_released(resp, cast(WitnessKey, key))
    with pytest.raises(SignatureCheckError):  # the witness is spent: no second release
        check_released(resp, cast(WitnessKey, key))


@pytest.mark.parametrize("which", ["tbs", "signature"])
def test_a_response_that_differs_from_what_was_verified_is_refused(which: str) -> None:
    key = _Recorder()
    resp = _response(key)
    assert key.last is not None
    tbs, sig = key.last
    key.last = (tbs + b"\x00", sig) if which == "tbs" else (tbs, sig[:-1] + b"\x00")
    with pytest.raises(SignatureCheckError):
        check_released(resp, cast(WitnessKey, key))
