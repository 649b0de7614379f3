"""Executing a ceremony script, step by step, with audit events and a signed transcript.

Order of work in each signing step: resolve the inputs, authenticate a quorum
if the step needs one, lint a trial signature, sign with the token, verify,
then register the result and write its audit event in one transaction, and
only then write output files (exclusive create: nothing is ever overwritten).
A failure stops the ceremony, is audited, and still leaves a signed
transcript saying how far it got.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from sqlalchemy import func, select

from appliance.audit.log import Actor
from appliance.ca import authorities as authz
from appliance.ca import keys as key_ops
from appliance.ceremony import quorum as quorum_mod
from appliance.ceremony import schema as s
from appliance.ceremony import transcript as tx
from appliance.ceremony import x509build as xb
from appliance.ceremony.script import LoadedScript
from appliance.errors import KeyNotFoundError
from appliance.hsm import keys, rng
from appliance.hsm.keys import KeyInfo
from appliance.hsm.module import token_text
from appliance.hsm.signer import token_private_key
from appliance.rfc3339 import format_z
from appliance.runtime import Appliance
from appliance.store.models import Authority, Crl, HsmKey
from appliance.x509 import algorithms, signing
from appliance.x509 import extensions as x509ext
from appliance.x509 import path as x509_path
from appliance.x509.algorithms import PublicKey
from appliance.x509.vocabulary import NameConstraints

Echo = Callable[[str], None]


@dataclass
class CaRef:
    """A CA certificate the ceremony can sign with or refer to."""

    name: str
    cert: x509.Certificate
    key: KeyInfo | None
    # Its chain, itself first, up to the root: what path validation checks new
    # certificates against before this CA's key signs them.
    chain: list[x509_path.Link] = field(default_factory=list)

    @property
    def public_key(self) -> PublicKey:
        return xb.ca_public_key(self.cert)

    def path(self) -> x509_path.Chain:
        return x509_path.Chain(self.chain or [x509_path.Link(self.name, self.cert)])


@dataclass
class StepResult:
    step_id: str
    type: str
    key: KeyInfo | None = None
    ca: CaRef | None = None
    record: dict[str, Any] = field(default_factory=dict)


class CeremonyRunner:
    def __init__(self, app: Appliance, script: LoadedScript, out_dir: Path, actor: Actor,
                 authenticate: quorum_mod.Authenticator, echo: Echo) -> None:
        self.app = app
        self.script = script
        self.c = script.ceremony
        self.out_dir = out_dir
        self.actor = actor
        self.authenticate = authenticate
        self.echo = echo
        self.results: dict[str, StepResult] = {}
        self.outputs: dict[str, str] = {}
        self.ceremony_ref = f"{script.ceremony.name}@{out_dir.name}"

    # -- the whole ceremony ----------------------------------------------------

    def run(self) -> Path:
        make_record_dir(self.out_dir)
        self._write("script.yaml", self.script.raw)
        pool = self.app.signing_pool()
        token = pool.token
        self.token = {"label": str(token.label), "serial": token_text(token.serial),
                      "manufacturer": str(token.manufacturer_id), "model": str(token.model)}
        signer = self.app.checkpoint_signer()  # the transcript key must exist before we start
        audit = self.app.audit_log(signing=True)
        started = _now()
        with self.app.db.transaction() as db:
            first = audit.append(db, "ceremony.started", self.actor, object_ids={
                "ceremony": self.c.name, "record": self.out_dir.name},
                details={"script_sha256": self.script.sha256, "operators": self.c.operators,
                         "witnesses": self.c.witnesses, "steps": len(self.c.steps)}).seq
        status, error = "completed", None
        failed_step: dict[str, Any] | None = None
        try:
            for n, step in enumerate(self.c.steps, 1):
                failed_step = {"number": n, "id": step.id, "type": step.type}
                self.echo(f"[{n}/{len(self.c.steps)}] {step.type} {step.id} ...")
                t0 = _now()
                officers = self._quorum(step)
                result = self._step(step)
                result.record.update({"id": step.id, "type": step.type, "started": format_z(t0),
                                      "finished": format_z(_now()), "token": self.token})
                if officers:
                    result.record["quorum"] = {"required": step.quorum.required,  # type: ignore[union-attr]
                                               "officers": officers}
                self.results[step.id] = result
                self.echo(f"      done: {_summary(result)}")
            failed_step = None
        except BaseException as exc:
            # a refused quorum is the ceremony's own controls working, not a fault: the
            # transcript says which, and at which step, so an auditor need not guess
            status = "refused" if isinstance(exc, quorum_mod.QuorumError) else "failed"
            error = f"{type(exc).__name__}: {exc}"
            self.echo(f"      FAILED: {error}")
            raise
        finally:
            with self.app.db.transaction() as db:
                last = audit.append(
                    db, f"ceremony.{'finished' if status == 'completed' else 'failed'}",
                    self.actor, outcome="success" if status == "completed" else "failure",
                    object_ids={"ceremony": self.c.name, "record": self.out_dir.name},
                    details={"status": status, "error": error, "failed_step": failed_step,
                             "outputs": dict(sorted(self.outputs.items()))}).seq
            doc = tx.build(self.script, self.c, self.token, [r.record for r in
                           self.results.values()], self.outputs, self.app.node_id, first, last,
                           started, _now(), status, error, failed_step)
            signed = tx.sign(doc, signer)
            raw = tx.dumps(signed)
            self._write("transcript.json", raw, track=False)
            with self.app.db.transaction() as db:
                audit.append(db, "ceremony.transcript.signed", self.actor,
                             object_ids={"ceremony": self.c.name, "record": self.out_dir.name},
                             details={"transcript_sha256": hashlib.sha256(raw).hexdigest(),
                                      "key_label": signer.label})
        return self.out_dir / "transcript.json"

    # -- steps -------------------------------------------------------------

    def _step(self, step: Any) -> StepResult:
        handlers: dict[str, Callable[[Any], StepResult]] = {
            "key": self._key, "root": self._root, "intermediate": self._intermediate,
            "cross-certificate": self._cross, "ocsp-signer": self._ocsp_signer,
            "csr": self._csr, "import": self._import, "crl": self._crl,
            "sign-csr": self._sign_csr,
        }
        return handlers[step.type](step)

    def _key(self, step: s.KeyStep) -> StepResult:
        info = key_ops.generate(self.app, step.label, step.key_type, self.actor)
        self._write(f"{step.id}.pub.pem", info.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        return StepResult(step.id, step.type, key=info, record={"key": _key_record(info)})

    def _root(self, step: s.RootStep) -> StepResult:
        if self.app.settings.config.hsm.root_offline:
            raise xb.CeremonyError(
                f"step {step.id}: this node's configuration says its root is offline "
                "(hsm.root_offline): a root is made on the offline root's own node, in its "
                "own token, never in this one")
        key = self._resolve_key(step.key)
        now = _now()
        start, end = xb.validity_window(step.validity, now, _cap(step, s.ROOT_MAX_DAYS), None)
        subject = x509ext.name(step.subject)
        # A self-signed root carries an AKI equal to its SKI (RFC 5280 allows omitting it;
        # pkilint and many path builders want it).
        builder = self._ca_builder(step, subject, subject, key.public_key, key.public_key, start,
                                   end, step.path_length, step.name_constraints)
        cert = self._sign(step, builder, key, key.public_key, "root", f"root {step.id}", None)
        return self._register(step, cert, key, "root", None)

    def _intermediate(self, step: s.IntermediateStep) -> StepResult:
        key = self._resolve_key(step.key)
        issuer = self._resolve_ca(step.issuer)
        self._require_subordinate_urls(step)
        _check_issuer_can_sign(issuer, step.path_length)
        start, end = xb.validity_window(step.validity, _now(),
                                        _cap(step, s.SUBORDINATE_MAX_DAYS), issuer.cert)
        builder = self._ca_builder(step, x509ext.name(step.subject), issuer.cert.subject,
                                   key.public_key, issuer.public_key, start, end,
                                   step.path_length, step.name_constraints)
        cert = self._sign(step, builder, self._signing_key(issuer), issuer.public_key,
                          "intermediate", f"intermediate {step.id}", issuer)
        return self._register(step, cert, key, "intermediate", issuer)

    def _cross(self, step: s.CrossStep) -> StepResult:
        subject_ca = self._resolve_ca(step.subject_authority)
        issuer = self._resolve_ca(step.issuer)
        if subject_ca.key is None:
            raise xb.CeremonyError(f"{step.subject_authority} has no key in this token")
        self._require_subordinate_urls(step)
        path_length = step.path_length
        if path_length is None:
            bc = subject_ca.cert.extensions.get_extension_for_class(x509.BasicConstraints).value
            path_length = bc.path_length
        _check_issuer_can_sign(issuer, path_length)
        start, end = xb.validity_window(step.validity, _now(),
                                        _cap(step, s.SUBORDINATE_MAX_DAYS), issuer.cert)
        builder = self._ca_builder(step, subject_ca.cert.subject, issuer.cert.subject,
                                   subject_ca.key.public_key, issuer.public_key, start,
                                   end, path_length, step.name_constraints)
        cert = self._sign(step, builder, self._signing_key(issuer), issuer.public_key,
                          "intermediate", f"cross-certificate {step.id}", issuer)
        return self._register(step, cert, subject_ca.key, "cross", issuer)

    def _ocsp_signer(self, step: s.OcspSignerStep) -> StepResult:
        key = self._resolve_key(step.key)
        issuer = self._resolve_ca(step.issuer)
        _check_issuer_can_sign(issuer, None, child_is_ca=False)
        start, end = xb.validity_window(step.validity, _now(),
                                        _cap(step, s.OCSP_SIGNER_MAX_DAYS), issuer.cert)
        builder = self._base_builder(step, x509ext.name(step.subject), issuer.cert.subject,
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
        cert = self._sign(step, builder, self._signing_key(issuer), issuer.public_key,
                          "ocsp-signer", f"OCSP signer {step.id}", issuer)
        return self._register(step, cert, key, "ocsp", issuer)

    def _sign_csr(self, step: s.SignCsrStep) -> StepResult:
        """A CA certificate for a key this token does not hold (made on another node, e.g.
        the online issuing CA's key, while this node holds the offline root)."""
        csr_pem, csr_source = self._csr_bytes(step.csr)
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
        issuer = self._resolve_ca(step.issuer)
        self._require_subordinate_urls(step)
        _check_issuer_can_sign(issuer, step.path_length)
        start, end = xb.validity_window(step.validity, _now(),
                                        _cap(step, s.SUBORDINATE_MAX_DAYS), issuer.cert)
        builder = self._ca_builder(step, csr.subject, issuer.cert.subject, subject_key,
                                   issuer.public_key, start, end, step.path_length,
                                   step.name_constraints)
        cert = self._sign(step, builder, self._signing_key(issuer), issuer.public_key,
                          "intermediate", f"subordinate CA {step.id}", issuer)
        spki = authz.spki_sha256(cert)
        with self.app.db.transaction() as db:
            key_row = db.scalars(select(HsmKey).where(HsmKey.spki_sha256 == spki)).first()
            parent = authz.get(db, issuer.name)
            row = authz.register(db, name=step.authority, kind="intermediate", cert=cert,
                                 key=key_row, parent=parent, ceremony=self.ceremony_ref)
            self.app.audit_log().append(db, "certificate.signed", self.actor, object_ids={
                "ceremony": self.ceremony_ref, "step": step.id, "authority": row.name,
                "serial": row.serial_hex},
                details={"kind": "intermediate", "subject": row.subject, "issuer": issuer.name,
                         "fingerprint_sha256": row.fingerprint_sha256,
                         "not_before": format_z(cert.not_valid_before_utc),
                         "not_after": format_z(cert.not_valid_after_utc),
                         "csr_sha256": digest, "subject_spki_sha256": spki,
                         "key_in_this_token": key_row is not None,
                         "skipped_lints": step.skip_lints})
        chain_certs = [link.cert for link in issuer.chain] or [issuer.cert]
        self._write(f"{step.id}.pem", cert.public_bytes(serialization.Encoding.PEM))
        self._write(f"{step.id}-chain.pem", _pem_chain([cert, *chain_certs]))
        ca = CaRef(step.authority, cert, None,
                   [x509_path.Link(step.authority, cert), *(issuer.chain or [
                       x509_path.Link(issuer.name, issuer.cert)])])
        return StepResult(step.id, step.type, ca=ca, record={
            "certificate": _cert_record(cert), "authority": step.authority,
            "issuer": issuer.name, "csr": {"source": csr_source, "sha256": digest,
                                           "subject": csr.subject.rfc4514_string(),
                                           "key_type": spec.name, "spki_sha256": spki}})

    def _csr_bytes(self, ref: str) -> tuple[bytes, str]:
        """A CSR made by an earlier step of this script, or a file (relative to it)."""
        earlier = self.results.get(ref)
        if earlier is not None:
            name = f"{ref}.csr.pem"
            return (self.out_dir / name).read_bytes(), name
        path = self.script.resolve_path(ref)
        return _read_bounded(path, 100_000), str(path)

    def _csr(self, step: s.CsrStep) -> StepResult:
        key = self._resolve_key(step.key)
        signer = token_private_key(self.app.pool, key)
        algo = algorithms.ca_signature_hash(key.public_key, step.signature_hash)
        pad = algorithms.rsa_padding(key.public_key, step.rsa_padding, algo)
        csr = x509.CertificateSigningRequestBuilder().subject_name(
            x509ext.name(step.subject)).sign(signer, algo, rsa_padding=pad)
        if not csr.is_signature_valid:
            raise xb.CeremonyError(f"CSR {step.id} does not verify")
        pem = csr.public_bytes(serialization.Encoding.PEM)
        with self.app.db.transaction() as db:
            self.app.audit_log().append(db, "ceremony.csr.created", self.actor, object_ids={
                "ceremony": self.ceremony_ref, "step": step.id, "key_label": key.label},
                details={"subject": csr.subject.rfc4514_string(),
                         "csr_sha256": hashlib.sha256(pem).hexdigest()})
        self._write(f"{step.id}.csr.pem", pem)
        return StepResult(step.id, step.type, key=key, record={
            "key": _key_record(key), "csr": {"subject": csr.subject.rfc4514_string(),
                                             "sha256": hashlib.sha256(pem).hexdigest()}})

    def _import(self, step: s.ImportStep) -> StepResult:
        key = self._resolve_key(step.key)
        try:
            cert = _load_cert(self.script.resolve_path(step.certificate))
            chain = [_load_cert(self.script.resolve_path(p)) for p in step.chain]
            root = _load_cert(self.script.resolve_path(step.root))
            expected = self._expected_subject(step)
        except xb.CeremonyError as exc:
            self._audit_refusal(step, "ceremony.import.refused", str(exc))
            raise
        problems = check_import(self.app, key, cert, chain, root, expected)
        if problems:
            self._audit_refusal(step, "ceremony.import.refused", "; ".join(problems))
            raise xb.CeremonyError(f"import {step.id} refused: " + "; ".join(problems))
        with self.app.db.transaction() as db:
            parent = None
            for i, outside in enumerate(reversed([*chain, root])):
                kind = "external-root" if i == 0 else "external-ca"
                name = (step.root_authority or f"{step.authority}-root") if i == 0 else \
                    f"{step.authority}-ca{i}"
                existing = db.scalars(select(Authority).where(
                    Authority.fingerprint_sha256 == authz.fingerprint(outside))).one_or_none()
                parent = existing or authz.register(db, name=name, kind=kind, cert=outside,
                                                    key=None, parent=parent,
                                                    ceremony=self.ceremony_ref)
            row = authz.register(db, name=step.authority, kind="intermediate", cert=cert,
                                 key=authz.key_row(db, key), parent=parent,
                                 ceremony=self.ceremony_ref)
            self.app.audit_log().append(db, "ceremony.import", self.actor, object_ids={
                "ceremony": self.ceremony_ref, "step": step.id, "authority": row.name,
                "key_label": key.label},
                details={"fingerprint_sha256": row.fingerprint_sha256, "subject": row.subject,
                         "outside_root_sha256": authz.fingerprint(root),
                         "checks": ["public key", "test signature", "subject bytes", "chain",
                                    "CA flags", "validity"]})
        self._write(f"{step.id}.pem", _pem_chain([cert, *chain, root]))
        with self.app.db.sessions() as db:
            links = authz.chain_links(db, authz.get(db, step.authority))
        ca = CaRef(step.authority, cert, key, links)
        return StepResult(step.id, step.type, key=key, ca=ca, record={
            "key": _key_record(key), "certificate": _cert_record(cert),
            "authority": step.authority, "outside_root": _cert_record(root)})

    def _crl(self, step: s.CrlStep) -> StepResult:
        issuer = self._resolve_ca(step.issuer)
        signing_key = self._signing_key(issuer)
        now = _now()
        with self.app.db.transaction() as db:
            issuer_row = authz.get(db, issuer.name)
            revoked_rows = [authz.get(db, n) for n in step.revoke_authorities]
            for r in revoked_rows:
                if r.parent_id != issuer_row.id:
                    raise xb.CeremonyError(f"{r.name} was not issued by {issuer.name}")
            number = int(db.scalar(select(func.max(Crl.number)).where(
                Crl.authority_id == issuer_row.id)) or 0) + 1
        entries = xb.revoked_entries(step.revoked, [int(r.serial_hex, 16) for r in revoked_rows],
                                     now)
        builder = x509.CertificateRevocationListBuilder(
            issuer_name=issuer.cert.subject, last_update=now,
            next_update=now + _days(step.next_update_days), revoked_certificates=entries,
        ).add_extension(x509.CRLNumber(number), critical=False).add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.public_key),
            critical=False)
        if step.crl_url:
            builder = builder.add_extension(x509.IssuingDistributionPoint(
                full_name=[x509.UniformResourceIdentifier(step.crl_url)], relative_name=None,
                only_contains_user_certs=False, only_contains_ca_certs=True,
                only_some_reasons=None, indirect_crl=False,
                only_contains_attribute_certs=False), critical=True)
        algo = algorithms.ca_signature_hash(issuer.public_key, step.signature_hash)
        crl = signing.sign_crl(builder, signing_key, algo,
                          algorithms.rsa_padding(issuer.public_key, step.rsa_padding, algo),
                          issuer.public_key, step.skip_lints, f"CRL {step.id}")
        der = crl.public_bytes(serialization.Encoding.DER)
        with self.app.db.transaction() as db:
            issuer_row = authz.get(db, issuer.name)
            db.add(Crl(authority_id=issuer_row.id, number=number, this_update=now,
                       next_update=now + _days(step.next_update_days), entries=len(entries),
                       der=der, created_at=now))
            for name in step.revoke_authorities:
                authz.get(db, name).status = "revoked"
            self.app.audit_log().append(db, "crl.signed", self.actor, object_ids={
                "ceremony": self.ceremony_ref, "step": step.id, "authority": issuer.name,
                "crl_number": number},
                details={"entries": len(entries), "revoked_authorities": step.revoke_authorities,
                         "next_update": format_z(now + _days(step.next_update_days)),
                         "sha256": hashlib.sha256(der).hexdigest()})
        self._write(f"{step.id}.crl", der)
        return StepResult(step.id, step.type, record={"crl": {
            "issuer": issuer.name, "number": number, "entries": len(entries),
            "sha256": hashlib.sha256(der).hexdigest()}})

    # -- building and signing ------------------------------------------------

    def _base_builder(self, step: Any, subject: x509.Name, issuer: x509.Name,
                      public_key: Any, start: datetime, end: datetime) -> x509.CertificateBuilder:
        return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
                .public_key(public_key)
                .serial_number(rng.random_serial(self.app.pool, step.serial_bits))
                .not_valid_before(start).not_valid_after(end))

    def _ca_builder(self, step: Any, subject: x509.Name, issuer: x509.Name, public_key: Any,
                    issuer_key: Any, start: datetime, end: datetime, path_length: int | None,
                    constraints: NameConstraints | None) -> x509.CertificateBuilder:
        builder = self._base_builder(step, subject, issuer, public_key, start, end)
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

    def _sign(self, step: Any, builder: x509.CertificateBuilder, signer: Any, issuer_public: Any,
              lint_kind: Any, what: str, issuer: CaRef | None) -> x509.Certificate:
        """Sign after the lint gate and, below a CA (``issuer``; None for a self-signed
        root), after path validation of the trial certificate under the issuer's chain."""
        algo = algorithms.ca_signature_hash(issuer_public, step.signature_hash)
        pad = algorithms.rsa_padding(issuer_public, step.rsa_padding, algo)
        if isinstance(signer, KeyInfo):
            signer = token_private_key(self.app.pool, signer)
        check = None
        if issuer is not None:
            chain = issuer.path()

            def check(trial: x509.Certificate) -> None:
                chain.check(trial, what)
        return signing.sign_certificate(builder, signer, algo, pad, issuer_public, lint_kind,
                                   step.skip_lints, what, check)

    def _register(self, step: Any, cert: x509.Certificate, key: KeyInfo, kind: str,
                  issuer: CaRef | None) -> StepResult:
        with self.app.db.transaction() as db:
            parent = authz.get(db, issuer.name) if issuer is not None else None
            row = authz.register(db, name=step.authority, kind=kind, cert=cert,
                                 key=authz.key_row(db, key), parent=parent,
                                 ceremony=self.ceremony_ref)
            self.app.audit_log().append(db, "certificate.signed", self.actor, object_ids={
                "ceremony": self.ceremony_ref, "step": step.id, "authority": row.name,
                "serial": row.serial_hex},
                details={"kind": kind, "subject": row.subject,
                         "issuer": issuer.name if issuer else row.name,
                         "fingerprint_sha256": row.fingerprint_sha256,
                         "not_before": format_z(cert.not_valid_before_utc),
                         "not_after": format_z(cert.not_valid_after_utc),
                         "key_label": key.label, "skipped_lints": step.skip_lints})
        self._write(f"{step.id}.pem", cert.public_bytes(serialization.Encoding.PEM))
        above = (issuer.chain or [x509_path.Link(issuer.name, issuer.cert)]) if issuer else []
        ca = CaRef(step.authority, cert, key, [x509_path.Link(step.authority, cert), *above])
        return StepResult(step.id, step.type, key=key, ca=ca, record={
            "key": _key_record(key), "certificate": _cert_record(cert),
            "authority": step.authority, "issuer": issuer.name if issuer else step.authority})

    # -- references, quorum, files ---------------------------------------------

    def _resolve_key(self, ref: str) -> KeyInfo:
        earlier = self.results.get(ref)
        if earlier is not None and earlier.key is not None:
            return earlier.key
        return keys.find_key(self.app.pool, ref)

    def _resolve_ca(self, ref: str) -> CaRef:
        earlier = self.results.get(ref)
        if earlier is not None and earlier.ca is not None:
            return earlier.ca
        with self.app.db.sessions() as db:
            row = authz.get(db, ref)
            cert = authz.certificate(row)
            key_row = db.get(HsmKey, row.key_id) if row.key_id is not None else None
            label = key_row.label if key_row is not None else None
            chain = authz.chain_links(db, row)
        key = None
        if label is not None:
            key = keys.find_key(self.app.pool, label, xb.ca_public_key(cert))
        return CaRef(ref, cert, key, chain)

    def _signing_key(self, issuer: CaRef) -> Any:
        if issuer.key is None:
            raise KeyNotFoundError(f"authority {issuer.name} has no signing key in this token")
        return token_private_key(self.app.pool, issuer.key)

    def _require_subordinate_urls(self, step: Any) -> None:
        if not step.crl_urls or not (step.ocsp_urls or step.ca_issuers_urls):
            raise xb.CeremonyError(
                f"step {step.id}: a subordinate CA needs crl_urls and an AIA URL "
                "(ocsp_urls or ca_issuers_urls)")

    def _expected_subject(self, step: s.ImportStep) -> x509.Name:
        if step.csr is not None:
            data, source = self._csr_bytes(step.csr)
            try:
                return x509.load_pem_x509_csr(data).subject
            except ValueError as exc:
                raise xb.CeremonyError(f"{source}: not a PEM CSR") from exc
        assert step.subject is not None
        return x509ext.name(step.subject)

    def _quorum(self, step: Any) -> list[str]:
        if step.quorum is None:
            return []
        request = quorum_mod.QuorumRequest(step.id, step.quorum.required,
                                           tuple(step.quorum.officers))
        self.echo(f"      step {step.id} needs {step.quorum.required} of "
                  f"{', '.join(step.quorum.officers)}")
        presented = self.authenticate(request)
        try:
            names = quorum_mod.check_quorum(request, presented, self.c.officers)
        except quorum_mod.QuorumError as exc:
            self._audit_refusal(step, "ceremony.quorum.refused", str(exc),
                                officers=[n for n, _ in presented])
            raise
        finally:
            presented.clear()
        with self.app.db.transaction() as db:
            self.app.audit_log().append(db, "ceremony.quorum.met", self.actor, object_ids={
                "ceremony": self.ceremony_ref, "step": step.id},
                details={"required": step.quorum.required, "officers": names})
        return names

    def _audit_refusal(self, step: Any, event: str, reason: str, **details: Any) -> None:
        with self.app.db.transaction() as db:
            self.app.audit_log().append(db, event, self.actor, outcome="denied", object_ids={
                "ceremony": self.ceremony_ref, "step": step.id},
                details={"reason": reason, **details})

    def _write(self, name: str, data: bytes, track: bool = True) -> None:
        path = self.out_dir / name
        with open(path, "xb") as fh:  # exclusive: never overwrite an output
            fh.write(data)
        os.chmod(path, 0o644)
        if track:
            self.outputs[name] = hashlib.sha256(data).hexdigest()


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
    problems += _ca_problems(cert, "the certificate")
    path = [cert, *chain, root]
    for child, parent in itertools.pairwise(path):
        try:
            child.verify_directly_issued_by(parent)
        except (ValueError, TypeError, Exception) as exc:
            problems.append(f"{child.subject.rfc4514_string()} is not signed by "
                            f"{parent.subject.rfc4514_string()} ({type(exc).__name__})")
        problems += _ca_problems(parent, parent.subject.rfc4514_string())
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


def _ca_problems(cert: x509.Certificate, what: str) -> list[str]:
    out = []
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        if not bc.ca:
            out.append(f"{what} is not a CA (basicConstraints CA:FALSE)")
    except x509.ExtensionNotFound:
        out.append(f"{what} has no basicConstraints")
    try:
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        if not ku.key_cert_sign:
            out.append(f"{what} may not sign certificates (no keyCertSign)")
    except x509.ExtensionNotFound:
        out.append(f"{what} has no keyUsage")
    now = _now()
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        out.append(f"{what} is not valid now ({format_z(cert.not_valid_before_utc)} .. "
                   f"{format_z(cert.not_valid_after_utc)})")
    return out


def _check_issuer_can_sign(issuer: CaRef, child_path_length: int | None, *,
                           child_is_ca: bool = True) -> None:
    """The issuer is a valid CA now, and (for a CA below it) its path length leaves room."""
    cert = issuer.cert
    problems = _ca_problems(cert, f"issuer {issuer.name}")
    if problems:
        raise xb.CeremonyError("; ".join(problems))
    if not child_is_ca:
        return
    limit = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length
    if limit == 0:
        raise xb.CeremonyError(f"issuer {issuer.name} has path length 0 and cannot issue CAs")
    if limit is not None and (child_path_length is None or child_path_length >= limit):
        raise xb.CeremonyError(
            f"issuer {issuer.name} has path length {limit}; a CA below it needs a path length "
            f"of at most {limit - 1}")


def make_record_dir(path: Path) -> None:
    """Create the ceremony record folder; an existing non-empty one is refused."""
    if path.exists():
        if not path.is_dir() or any(path.iterdir()):
            raise xb.CeremonyError(f"{path} already exists and is not empty; outputs are never "
                                   "overwritten")
    else:
        path.mkdir(parents=True, mode=0o750)


def _load_cert(path: Path) -> x509.Certificate:
    data = _read_bounded(path)
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise xb.CeremonyError(f"{path}: not a certificate ({exc})") from None


def _read_bounded(path: Path, limit: int = 1_000_000) -> bytes:
    try:
        if path.stat().st_size > limit:
            raise xb.CeremonyError(f"{path} is larger than {limit} bytes")
        return path.read_bytes()
    except OSError as exc:
        raise xb.CeremonyError(f"cannot read {path}: {exc.strerror}") from exc


def _pem_chain(certs: list[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def _key_record(info: KeyInfo) -> dict[str, Any]:
    return {"label": info.label, "ck_id": info.id.hex(), "key_type": info.spec.name,
            "spki_sha256": info.spki_sha256}


def _cert_record(cert: x509.Certificate) -> dict[str, Any]:
    return {"subject": cert.subject.rfc4514_string(), "issuer": cert.issuer.rfc4514_string(),
            "serial": f"{cert.serial_number:x}",
            "sha256": authz.fingerprint(cert),
            "not_before": format_z(cert.not_valid_before_utc),
            "not_after": format_z(cert.not_valid_after_utc)}


def _summary(result: StepResult) -> str:
    rec = result.record
    if "certificate" in rec:
        return f"{rec['certificate']['subject']} serial {rec['certificate']['serial']}"
    if "crl" in rec:
        return f"CRL #{rec['crl']['number']} with {rec['crl']['entries']} entries"
    if "csr" in rec:
        return f"CSR for {rec['csr']['subject']}"
    if "key" in rec:
        return f"key {rec['key']['label']} ({rec['key']['key_type']})"
    return "ok"


def _cap(step: Any, default: int) -> int:
    """The default cap, or a lower one the script sets; a script can never raise it."""
    cap: int = min(step.max_validity_days or default, default)
    return cap


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _days(n: int) -> timedelta:
    return timedelta(days=n)
