"""Ceremony steps for a CA whose certificate is signed elsewhere: the CSR out, the certificate in.

``csr`` has the token sign a request for one of its keys; ``import`` takes the
certificate an outside CA made for it, and only after every check in
:func:`check_import` passes (the key is the token's, the subject is byte-identical, the
chain verifies up to the outside root and validates as a path) registers the chain.
A refusal is audited before it is raised.
"""

from __future__ import annotations

import hashlib
import itertools
import secrets
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from sqlalchemy import select

from appliance.ca import authorities as authz
from appliance.ceremony import schema as s
from appliance.ceremony import x509build as xb
from appliance.ceremony.ca_checks import ca_problems
from appliance.ceremony.context import (
    CaRef,
    StepContext,
    StepResult,
    cert_record,
    key_record,
    pem_chain,
    read_bounded,
)
from appliance.hsm.keys import KeyInfo
from appliance.hsm.signer import token_private_key
from appliance.runtime import Appliance
from appliance.store.models import Authority
from appliance.x509 import algorithms
from appliance.x509 import extensions as x509ext
from appliance.x509 import path as x509_path


def csr(ctx: StepContext, step: s.CsrStep) -> StepResult:
    key = ctx.resolve_key(step.key)
    signer = token_private_key(ctx.app.pool, key)
    algo = algorithms.ca_signature_hash(key.public_key, step.signature_hash)
    pad = algorithms.rsa_padding(key.public_key, step.rsa_padding, algo)
    request = x509.CertificateSigningRequestBuilder().subject_name(
        x509ext.name(step.subject)).sign(signer, algo, rsa_padding=pad)
    if not request.is_signature_valid:
        raise xb.CeremonyError(f"CSR {step.id} does not verify")
    pem = request.public_bytes(serialization.Encoding.PEM)
    with ctx.app.db.transaction() as db:
        ctx.app.audit_log().append(db, "ceremony.csr.created", ctx.actor, object_ids={
            "ceremony": ctx.ceremony_ref, "step": step.id, "key_label": key.label},
            details={"subject": request.subject.rfc4514_string(),
                     "csr_sha256": hashlib.sha256(pem).hexdigest()})
    ctx.write(f"{step.id}.csr.pem", pem)
    return StepResult(step.id, step.type, key=key, record={
        "key": key_record(key), "csr": {"subject": request.subject.rfc4514_string(),
                                        "sha256": hashlib.sha256(pem).hexdigest()}})


def import_ca(ctx: StepContext, step: s.ImportStep) -> StepResult:
    key = ctx.resolve_key(step.key)
    try:
        cert = _load_cert(ctx.script.resolve_path(step.certificate))
        chain = [_load_cert(ctx.script.resolve_path(p)) for p in step.chain]
        root = _load_cert(ctx.script.resolve_path(step.root))
        expected = _expected_subject(ctx, step)
    except xb.CeremonyError as exc:
        ctx.audit_refusal(step, "ceremony.import.refused", str(exc))
        raise
    problems = check_import(ctx.app, key, cert, chain, root, expected)
    if problems:
        ctx.audit_refusal(step, "ceremony.import.refused", "; ".join(problems))
        raise xb.CeremonyError(f"import {step.id} refused: " + "; ".join(problems))
    with ctx.app.db.transaction() as db:
        parent = None
        for i, outside in enumerate(reversed([*chain, root])):
            kind = "external-root" if i == 0 else "external-ca"
            name = (step.root_authority or f"{step.authority}-root") if i == 0 else \
                f"{step.authority}-ca{i}"
            existing = db.scalars(select(Authority).where(
                Authority.fingerprint_sha256 == authz.fingerprint(outside))).one_or_none()
            parent = existing or authz.register(db, name=name, kind=kind, cert=outside,
                                                key=None, parent=parent,
                                                ceremony=ctx.ceremony_ref)
        row = authz.register(db, name=step.authority, kind="intermediate", cert=cert,
                             key=authz.key_row(db, key), parent=parent,
                             ceremony=ctx.ceremony_ref)
        ctx.app.audit_log().append(db, "ceremony.import", ctx.actor, object_ids={
            "ceremony": ctx.ceremony_ref, "step": step.id, "authority": row.name,
            "key_label": key.label},
            details={"fingerprint_sha256": row.fingerprint_sha256, "subject": row.subject,
                     "outside_root_sha256": authz.fingerprint(root),
                     "checks": ["public key", "test signature", "subject bytes", "chain",
                                "CA flags", "validity"]})
    ctx.write(f"{step.id}.pem", pem_chain([cert, *chain, root]))
    with ctx.app.db.sessions() as db:
        links = authz.chain_links(db, authz.get(db, step.authority))
    ca = CaRef(step.authority, cert, key, links)
    return StepResult(step.id, step.type, key=key, ca=ca, record={
        "key": key_record(key), "certificate": cert_record(cert),
        "authority": step.authority, "outside_root": cert_record(root)})


def _expected_subject(ctx: StepContext, step: s.ImportStep) -> x509.Name:
    if step.csr is not None:
        data, source = ctx.csr_bytes(step.csr)
        try:
            return x509.load_pem_x509_csr(data).subject
        except ValueError as exc:
            raise xb.CeremonyError(f"{source}: not a PEM CSR") from exc
    assert step.subject is not None
    return x509ext.name(step.subject)


def check_import(app: Appliance, key: KeyInfo, cert: x509.Certificate,
                 chain: list[x509.Certificate], root: x509.Certificate,
                 expected_subject: x509.Name) -> list[str]:
    """Every reason to refuse an outside-signed certificate for one of our keys."""
    problems = []
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    if spki != key.spki_der:
        problems.append("the certificate's public key is not the token key's")
    else:
        challenge = secrets.token_bytes(32)
        signer = token_private_key(app.pool, key)
        public = cert.public_key()
        try:
            if isinstance(signer, rsa.RSAPrivateKey) and isinstance(public, rsa.RSAPublicKey):
                sig = signer.sign(challenge, padding.PKCS1v15(), hashes.SHA256())
                public.verify(sig, challenge, padding.PKCS1v15(), hashes.SHA256())
            elif isinstance(signer, ec.EllipticCurvePrivateKey) and \
                    isinstance(public, ec.EllipticCurvePublicKey):
                sig = signer.sign(challenge, ec.ECDSA(hashes.SHA256()))
                public.verify(sig, challenge, ec.ECDSA(hashes.SHA256()))
            else:
                raise TypeError("key type mismatch")
        except Exception as exc:
            problems.append(f"test signature by the token key failed against the certificate "
                            f"({type(exc).__name__})")
    if cert.subject.public_bytes() != expected_subject.public_bytes():
        problems.append(f"subject {cert.subject.rfc4514_string()!r} differs from the expected "
                        f"{expected_subject.rfc4514_string()!r} (byte comparison)")
    problems += ca_problems(cert, "the certificate")
    path = [cert, *chain, root]
    for child, parent in itertools.pairwise(path):
        try:
            child.verify_directly_issued_by(parent)
        except (ValueError, TypeError, Exception) as exc:
            problems.append(f"{child.subject.rfc4514_string()} is not signed by "
                            f"{parent.subject.rfc4514_string()} ({type(exc).__name__})")
        problems += ca_problems(parent, parent.subject.rfc4514_string())
    try:
        root.verify_directly_issued_by(root)
    except Exception:
        problems.append("the outside root is not self-signed")
    if not problems:
        # The whole imported path as a relying party sees it (the outside root's name
        # constraints and path length bind our CA too).
        names = ["the imported CA", *[f"outside CA {i + 1}" for i in range(len(chain))],
                 "the outside root"]
        try:
            x509_path.Chain([x509_path.Link(n, c) for n, c in zip(names, path, strict=True)])
        except x509_path.PathError as exc:
            problems.append(f"the imported chain does not validate: {exc}")
    return problems


def _load_cert(path: Path) -> x509.Certificate:
    data = read_bounded(path)
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise xb.CeremonyError(f"{path}: not a certificate ({exc})") from None
