"""The RA node's pure pieces: chain checks of what the upstream sends, when the credential
is renewed, how a local refusal names its hop, and the ``ra`` configuration."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from appliance.config import ApplianceConfig, RaConfig
from appliance.issuance.pipeline import IssuanceError
from appliance.ra import credential
from appliance.ra.node import refused_here

NOW = datetime.now(UTC).replace(microsecond=0)


def _cert(name: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Certificate | None,
          issuer_key: ec.EllipticCurvePrivateKey, *, ca: bool, start: datetime = NOW,
          days: int = 1) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    return (x509.CertificateBuilder().subject_name(subject)
            .issuer_name(issuer.subject if issuer else subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start - timedelta(minutes=1))
            .not_valid_after(start + timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .sign(issuer_key, hashes.SHA256()))


@pytest.fixture(scope="module")
def pki() -> dict[str, x509.Certificate]:
    rk, ik, lk, ok = (ec.generate_private_key(ec.SECP256R1()) for _ in range(4))
    root = _cert("root", rk, None, rk, ca=True, days=30)
    issuing = _cert("issuing", ik, root, rk, ca=True, days=20)
    leaf = _cert("leaf", lk, issuing, ik, ca=False)
    other_root = _cert("root", ok, None, ok, ca=True)  # same name, another key
    return {"root": root, "issuing": issuing, "leaf": leaf, "other": other_root}


def test_a_chain_to_the_upstream_root_is_accepted(pki: dict[str, x509.Certificate]) -> None:
    credential.chain_reaches(pki["leaf"], [pki["issuing"]], [pki["root"]])
    credential.chain_reaches(pki["issuing"], [], [pki["root"]])


def test_a_chain_that_misses_the_root_is_refused(pki: dict[str, x509.Certificate]) -> None:
    with pytest.raises(credential.CredentialError, match="upstream root"):
        credential.chain_reaches(pki["leaf"], [pki["issuing"]], [pki["other"]])
    with pytest.raises(credential.CredentialError, match="does not reach"):
        credential.chain_reaches(pki["leaf"], [], [pki["root"]])


def test_a_chain_with_an_expired_link_is_refused(pki: dict[str, x509.Certificate]) -> None:
    with pytest.raises(credential.CredentialError, match="not valid now"):
        credential.chain_reaches(pki["leaf"], [pki["issuing"]], [pki["root"]],
                                 at=NOW + timedelta(days=5))


def test_renewal_is_due_at_the_configured_fraction(pki: dict[str, x509.Certificate]) -> None:
    leaf = pki["leaf"]
    due = credential.renewal_due(leaf, 0.5)
    half = leaf.not_valid_before_utc + (leaf.not_valid_after_utc
                                        - leaf.not_valid_before_utc) / 2
    assert abs((due - half).total_seconds()) < 1


def test_pem_input_is_bounded() -> None:
    with pytest.raises(credential.CredentialError, match="larger than"):
        credential.load_pems(b"x" * (credential.MAX_CHAIN_BYTES + 1), "chain")
    with pytest.raises(credential.CredentialError):
        credential.load_pems(b"not pem", "chain")


def test_a_local_refusal_names_this_hop_once() -> None:
    exc = refused_here(IssuanceError("too long"), "edge-1")
    assert str(exc) == "refused at edge-1: too long"
    assert exc.hop == "edge-1"  # type: ignore[attr-defined]
    assert str(refused_here(exc, "edge-1")) == "refused at edge-1: too long"


def test_role_ra_needs_a_name_and_an_upstream() -> None:
    with pytest.raises(ValueError, match=r"ra\.name"):
        ApplianceConfig.model_validate({"role": "ra"})
    cfg = ApplianceConfig.model_validate({"role": "ra", "ra": {
        "name": "edge-1", "upstream_url": "https://ca.example:8443/"}})
    assert cfg.ra.upstream_base_url() == "https://ca.example:8443"
    assert cfg.ra.credential_lifetime == "72h"
    for bad in ({"name": "no spaces"}, {"upstream_url": "http://plain"},
                {"renew_fraction": 1.0}, {"credential_lifetime": "3 days"}):
        with pytest.raises(ValueError):
            RaConfig.model_validate(bad)
