"""Ceremony steps that make CA keys and the certificates this token signs.

``key`` generates a key in the token; ``root``, ``intermediate``,
``cross-certificate``, ``ocsp-signer`` and ``sign-csr`` build a certificate and sign
it here. Order of work in each signing step: resolve the inputs, lint a trial
signature (and, below a CA, validate its path under the issuer's chain), sign with
the token, verify, then register the result and write its audit event in one
transaction, and only then write output files.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from sqlalchemy import select

from appliance.ca import authorities as authz
from appliance.ca import keys as key_ops
from appliance.ceremony import schema as s
from appliance.ceremony import x509build as xb
from appliance.ceremony.ca_checks import check_issuer_can_sign
from appliance.ceremony.context import (
    CaRef,
    StepContext,
    StepResult,
    cert_record,
    key_record,
    pem_chain,
    utc_now,
    validity_cap,
)
from appliance.hsm import rng
from appliance.hsm.keys import KeyInfo
from appliance.hsm.signer import token_private_key
from appliance.rfc3339 import format_z
from appliance.store.models import HsmKey
from appliance.x509 import algorithms, signing
from appliance.x509 import extensions as x509ext
from appliance.x509 import path as x509_path
from appliance.x509.vocabulary import NameConstraints


def key(ctx: StepContext, step: s.KeyStep) -> StepResult:
    info = key_ops.generate(ctx.app, step.label, step.key_type, ctx.actor)
    ctx.write(f"{step.id}.pub.pem", info.public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return StepResult(step.id, step.type, key=info, record={"key": key_record(info)})


def root(ctx: StepContext, step: s.RootStep) -> StepResult:
    if ctx.app.settings.config.hsm.root_offline:
        raise xb.CeremonyError(
            f"step {step.id}: this node's configuration says its root is offline "
            "(hsm.root_offline): a root is made on the offline root's own node, in its "
            "own token, never in this one")
    key = ctx.resolve_key(step.key)
    now = utc_now()
    start, end = xb.validity_window(step.validity, now, validity_cap(step, s.ROOT_MAX_DAYS), None)
    subject = x509ext.name(step.subject)
    # A self-signed root carries an AKI equal to its SKI (RFC 5280 allows omitting it;
    # pkilint and many path builders want it).
    builder = _ca_builder(ctx, step, subject, subject, key.public_key, key.public_key, start,
                          end, step.path_length, step.name_constraints)
    cert = _sign(ctx, step, builder, key, key.public_key, "root", f"root {step.id}", None)
    return _register(ctx, step, cert, key, "root", None)


def intermediate(ctx: StepContext, step: s.IntermediateStep) -> StepResult:
    key = ctx.resolve_key(step.key)
    issuer = ctx.resolve_ca(step.issuer)
    _require_subordinate_urls(step)
    check_issuer_can_sign(issuer, step.path_length)
    start, end = xb.validity_window(step.validity, utc_now(),
                                    validity_cap(step, s.SUBORDINATE_MAX_DAYS), issuer.cert)
    builder = _ca_builder(ctx, step, x509ext.name(step.subject), issuer.cert.subject,
                          key.public_key, issuer.public_key, start, end,
                          step.path_length, step.name_constraints)
    cert = _sign(ctx, step, builder, ctx.signing_key(issuer), issuer.public_key,
                 "intermediate", f"intermediate {step.id}", issuer)
    return _register(ctx, step, cert, key, "intermediate", issuer)


def cross(ctx: StepContext, step: s.CrossStep) -> StepResult:
    subject_ca = ctx.resolve_ca(step.subject_authority)
    issuer = ctx.resolve_ca(step.issuer)
    if subject_ca.key is None:
        raise xb.CeremonyError(f"{step.subject_authority} has no key in this token")
    _require_subordinate_urls(step)
    path_length = step.path_length
    if path_length is None:
        bc = subject_ca.cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        path_length = bc.path_length
    check_issuer_can_sign(issuer, path_length)
    start, end = xb.validity_window(step.validity, utc_now(),
                                    validity_cap(step, s.SUBORDINATE_MAX_DAYS), issuer.cert)
    builder = _ca_builder(ctx, step, subject_ca.cert.subject, issuer.cert.subject,
                          subject_ca.key.public_key, issuer.public_key, start,
                          end, path_length, step.name_constraints)
    cert = _sign(ctx, step, builder, ctx.signing_key(issuer), issuer.public_key,
                 "intermediate", f"cross-certificate {step.id}", issuer)
    return _register(ctx, step, cert, subject_ca.key, "cross", issuer)


def ocsp_signer(ctx: StepContext, step: s.OcspSignerStep) -> StepResult:
    key = ctx.resolve_key(step.key)
    issuer = ctx.resolve_ca(step.issuer)
    check_issuer_can_sign(issuer, None, child_is_ca=False)
    start, end = xb.validity_window(step.validity, utc_now(),
                                    validity_cap(step, s.OCSP_SIGNER_MAX_DAYS), issuer.cert)
    builder = _base_builder(ctx, step, x509ext.name(step.subject), issuer.cert.subject,
                            key.public_key, start, end)
    builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
    builder = builder.add_extension(
        x509ext.key_usage(step.key_usage or ["digital_signature"]), critical=True)
    builder = builder.add_extension(
        x509ext.eku(step.extended_key_usage or ["ocsp_signing"]), critical=False)
    builder = builder.add_extension(x509.OCSPNoCheck(), critical=False)
    builder = x509ext.add_common_extensions(
        builder, subject_key=key.public_key, issuer_key=issuer.public_key,
        policies=step.policies, crl_urls=step.crl_urls, ocsp_urls=step.ocsp_urls,
        ca_issuers_urls=step.ca_issuers_urls)
    cert = _sign(ctx, step, builder, ctx.signing_key(issuer), issuer.public_key,
                 "ocsp-signer", f"OCSP signer {step.id}", issuer)
    return _register(ctx, step, cert, key, "ocsp", issuer)


def sign_csr(ctx: StepContext, step: s.SignCsrStep) -> StepResult:
    """A CA certificate for a key this token does not hold (made on another node, e.g.
    the online issuing CA's key, while this node holds the offline root)."""
    csr_pem, csr_source = ctx.csr_bytes(step.csr)
    digest = hashlib.sha256(csr_pem).hexdigest()
    if step.csr_sha256 is not None and step.csr_sha256 != digest:
        raise xb.CeremonyError(f"step {step.id}: {csr_source} has SHA-256 {digest}, not the "
                               f"{step.csr_sha256} the script expects (wrong or altered "
                               "file)")
    try:
        csr = (x509.load_pem_x509_csr(csr_pem) if b"-----BEGIN" in csr_pem
               else x509.load_der_x509_csr(csr_pem))
        subject_key = csr.public_key()
        signature_ok = csr.is_signature_valid
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise xb.CeremonyError(f"step {step.id}: {csr_source} is not a usable CSR "
                               f"({exc})") from None
    if not signature_ok:
        raise xb.CeremonyError(f"step {step.id}: the CSR's signature does not verify "
                               "(its subject does not hold the key)")
    if not isinstance(subject_key, (ec.EllipticCurvePublicKey, rsa.RSAPublicKey)):
        raise xb.CeremonyError(f"step {step.id}: the CSR's key is neither RSA nor ECDSA")
    spec = algorithms.check_ca_key(subject_key)  # an approved CA key type, or refused
    if step.subject and csr.subject.public_bytes() != x509ext.name(step.subject).public_bytes():
        raise xb.CeremonyError(
            f"step {step.id}: the CSR's subject {csr.subject.rfc4514_string()!r} is not "
            f"the {x509ext.name(step.subject).rfc4514_string()!r} the script expects")
    issuer = ctx.resolve_ca(step.issuer)
    _require_subordinate_urls(step)
    check_issuer_can_sign(issuer, step.path_length)
    start, end = xb.validity_window(step.validity, utc_now(),
                                    validity_cap(step, s.SUBORDINATE_MAX_DAYS), issuer.cert)
    builder = _ca_builder(ctx, step, csr.subject, issuer.cert.subject, subject_key,
                          issuer.public_key, start, end, step.path_length,
                          step.name_constraints)
    cert = _sign(ctx, step, builder, ctx.signing_key(issuer), issuer.public_key,
                 "intermediate", f"subordinate CA {step.id}", issuer)
    spki = authz.spki_sha256(cert)
    with ctx.app.db.transaction() as db:
        key_row = db.scalars(select(HsmKey).where(HsmKey.spki_sha256 == spki)).first()
        parent = authz.get(db, issuer.name)
        row = authz.register(db, name=step.authority, kind="intermediate", cert=cert,
                             key=key_row, parent=parent, ceremony=ctx.ceremony_ref)
        ctx.app.audit_log().append(db, "certificate.signed", ctx.actor, object_ids={
            "ceremony": ctx.ceremony_ref, "step": step.id, "authority": row.name,
            "serial": row.serial_hex},
            details={"kind": "intermediate", "subject": row.subject, "issuer": issuer.name,
                     "fingerprint_sha256": row.fingerprint_sha256,
                     "not_before": format_z(cert.not_valid_before_utc),
                     "not_after": format_z(cert.not_valid_after_utc),
                     "csr_sha256": digest, "subject_spki_sha256": spki,
                     "key_in_this_token": key_row is not None,
                     "skipped_lints": step.skip_lints})
    chain_certs = [link.cert for link in issuer.chain] or [issuer.cert]
    ctx.write(f"{step.id}.pem", cert.public_bytes(serialization.Encoding.PEM))
    ctx.write(f"{step.id}-chain.pem", pem_chain([cert, *chain_certs]))
    ca = CaRef(step.authority, cert, None,
               [x509_path.Link(step.authority, cert), *(issuer.chain or [
                   x509_path.Link(issuer.name, issuer.cert)])])
    return StepResult(step.id, step.type, ca=ca, record={
        "certificate": cert_record(cert), "authority": step.authority,
        "issuer": issuer.name, "csr": {"source": csr_source, "sha256": digest,
                                       "subject": csr.subject.rfc4514_string(),
                                       "key_type": spec.name, "spki_sha256": spki}})


def _base_builder(ctx: StepContext, step: Any, subject: x509.Name, issuer: x509.Name,
                  public_key: Any, start: datetime,
                  end: datetime) -> x509.CertificateBuilder:
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
            .public_key(public_key)
            .serial_number(rng.random_serial(ctx.app.pool, step.serial_bits))
            .not_valid_before(start).not_valid_after(end))


def _ca_builder(ctx: StepContext, step: Any, subject: x509.Name, issuer: x509.Name,
                public_key: Any, issuer_key: Any, start: datetime, end: datetime,
                path_length: int | None,
                constraints: NameConstraints | None) -> x509.CertificateBuilder:
    builder = _base_builder(ctx, step, subject, issuer, public_key, start, end)
    builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=path_length),
                                    critical=True)
    usage = step.key_usage or ["key_cert_sign", "crl_sign"]
    if "key_cert_sign" not in usage:
        raise xb.CeremonyError(f"step {step.id}: a CA certificate needs key_cert_sign")
    builder = builder.add_extension(x509ext.key_usage(usage), critical=True)
    if step.extended_key_usage:
        builder = builder.add_extension(x509ext.eku(step.extended_key_usage), critical=False)
    if constraints is not None:
        builder = builder.add_extension(x509ext.name_constraints(constraints), critical=True)
    pc = getattr(step, "policy_constraints", None)
    if pc is not None:
        builder = builder.add_extension(x509.PolicyConstraints(
            pc.require_explicit_policy, pc.inhibit_policy_mapping), critical=True)
    inhibit_any = getattr(step, "inhibit_any_policy", None)
    if inhibit_any is not None:
        builder = builder.add_extension(x509.InhibitAnyPolicy(inhibit_any), critical=True)
    return x509ext.add_common_extensions(
        builder, subject_key=public_key, issuer_key=issuer_key, policies=step.policies,
        crl_urls=step.crl_urls, ocsp_urls=step.ocsp_urls,
        ca_issuers_urls=step.ca_issuers_urls)


def _sign(ctx: StepContext, step: Any, builder: x509.CertificateBuilder, signer: Any,
          issuer_public: Any, lint_kind: Any, what: str,
          issuer: CaRef | None) -> x509.Certificate:
    """Sign after the lint gate and, below a CA (``issuer``; None for a self-signed
    root), after path validation of the trial certificate under the issuer's chain."""
    algo = algorithms.ca_signature_hash(issuer_public, step.signature_hash)
    pad = algorithms.rsa_padding(issuer_public, step.rsa_padding, algo)
    if isinstance(signer, KeyInfo):
        signer = token_private_key(ctx.app.pool, signer)
    check = None
    if issuer is not None:
        chain = issuer.path()

        def check(trial: x509.Certificate) -> None:
            chain.check(trial, what)
    return signing.sign_certificate(builder, signer, algo, pad, issuer_public, lint_kind,
                               step.skip_lints, what, check)


def _register(ctx: StepContext, step: Any, cert: x509.Certificate, key: KeyInfo,
              kind: str, issuer: CaRef | None) -> StepResult:
    with ctx.app.db.transaction() as db:
        parent = authz.get(db, issuer.name) if issuer is not None else None
        row = authz.register(db, name=step.authority, kind=kind, cert=cert,
                             key=authz.key_row(db, key), parent=parent,
                             ceremony=ctx.ceremony_ref)
        ctx.app.audit_log().append(db, "certificate.signed", ctx.actor, object_ids={
            "ceremony": ctx.ceremony_ref, "step": step.id, "authority": row.name,
            "serial": row.serial_hex},
            details={"kind": kind, "subject": row.subject,
                     "issuer": issuer.name if issuer else row.name,
                     "fingerprint_sha256": row.fingerprint_sha256,
                     "not_before": format_z(cert.not_valid_before_utc),
                     "not_after": format_z(cert.not_valid_after_utc),
                     "key_label": key.label, "skipped_lints": step.skip_lints})
    ctx.write(f"{step.id}.pem", cert.public_bytes(serialization.Encoding.PEM))
    above = (issuer.chain or [x509_path.Link(issuer.name, issuer.cert)]) if issuer else []
    ca = CaRef(step.authority, cert, key, [x509_path.Link(step.authority, cert), *above])
    return StepResult(step.id, step.type, key=key, ca=ca, record={
        "key": key_record(key), "certificate": cert_record(cert),
        "authority": step.authority, "issuer": issuer.name if issuer else step.authority})


def _require_subordinate_urls(step: Any) -> None:
    if not step.crl_urls or not (step.ocsp_urls or step.ca_issuers_urls):
        raise xb.CeremonyError(
            f"step {step.id}: a subordinate CA needs crl_urls and an AIA URL "
            "(ocsp_urls or ca_issuers_urls)")
