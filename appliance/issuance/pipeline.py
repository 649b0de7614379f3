"""The issuance pipeline: every certificate the CA issues goes through ``Issuer.issue``.

REST sign, renew, ACME finalize and RA requests (``web/ra.py``) all call this one
function, so the order below cannot be skipped by a new entry point:

1. the CSR: signature, key type and size;
2. the credential's names must equal the CSR's names;
3. inventory: the record the names belong to (required if the provisioner says so);
4. validity from the provisioner's claims (falling back to the authority's);
5. the template renders the certificate description (sandboxed);
6. name policy (authority, then provisioner) on the names the certificate will carry;
7. a serial from the token RNG is reserved in the database (committed) before signing,
   so a crash can never leave a signed certificate the CA does not know of; the same
   transaction spends the request's one-time token (``SignRequest.token_spend``), so a
   replay reserves nothing;
8. pkilint on a trial signature by a throw-away key; then the token signs the trial's own
   TBS bytes (``x509.signing.sign_as_trial``), the TBS bytes are compared (the token key's
   wrapper verified the signature before it released it);
9. the certificate is stored and audited in one transaction, with its pre-signed OCSP
   response ("good", signed just before; if the OCSP signing fails the issuance stands and
   the pre-signer batch signs it).

A refusal at any step is audited (``certificate.refused``, in the transaction that also
spends the request's one-time token) and changes nothing else; a failure after the
reservation marks the reservation ``failed``.

What every request reads (the authority and its token key, the template, the name
policies, the inventory match) is cached in this process behind the issuance epochs
(``appliance.store.epochs``): read once per request, bumped by database triggers on any
change, so a change made anywhere counts on the very next request in every worker and node.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any, cast

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy import Table, bindparam, insert, select, update

from appliance import lint, logs, policy
from appliance.audit.log import Actor
from appliance.ca import authorities as authz
from appliance.ca import crl_points
from appliance.config import ApplianceConfig
from appliance.errors import ApplianceError, DatabaseError, ServerFault, SignatureCheckError
from appliance.hsm import keys, rng
from appliance.hsm.signer import TokenPrivateKey, token_private_key
from appliance.inventory import match as inventory
from appliance.issuance import csr as csr_module
from appliance.issuance.request import MAX_CERT_LIFETIME, ProvisionerContext, SignRequest
from appliance.issuance.spend import replay_refused, spend
from appliance.ocsp import presign as ocsp_presign
from appliance.ocsp.signer import CertStatus, SignedResponse
from appliance.runtime import Appliance
from appliance.store import epochs as store_epochs
from appliance.store.epochs import EpochCache, Epochs
from appliance.store.models import (
    Authority,
    Certificate,
    HsmKey,
    NamePolicy,
    Template,
)
from appliance.templates import build as template_build
from appliance.templates import render as template_render
from appliance.templates.errors import TemplateError, TemplateInputError, TemplateRefusal
from appliance.templates.inputs import TemplateInput
from appliance.templates.shipped import builtin_templates
from appliance.x509 import algorithms, signing
from appliance.x509 import path as x509_path

log = logs.get("issuance")
BACKDATE = timedelta(seconds=60)
MAX_LIFETIME = MAX_CERT_LIFETIME
_CERTS = cast(Table, Certificate.__table__)
# Hot statements, built once (values bound per call).
_RESERVE = insert(_CERTS)
_ISSUED = update(_CERTS).where(_CERTS.c.id == bindparam("b_id"), _CERTS.c.status == "reserved")
_TEMPLATES = cast(Table, Template.__table__)
_TEMPLATE_SOURCE = select(_TEMPLATES.c.source).where(_TEMPLATES.c.name == bindparam("b_name"))
_NP = cast(Table, NamePolicy.__table__)
_POLICIES = select(_NP.c.provisioner_id, _NP.c.source).where(
    _NP.c.provisioner_id.is_(None) | (_NP.c.provisioner_id == bindparam("b_prov")))
_ABANDONED = (select(_CERTS.c.id, _CERTS.c.serial_hex, _CERTS.c.provisioner_name,
                     _CERTS.c.reserved_at)
              .where(_CERTS.c.status == "reserved", _CERTS.c.reserved_at < bindparam("b_before"))
              .order_by(_CERTS.c.id).limit(bindparam("b_limit")))
_ABANDON = (update(_CERTS).where(_CERTS.c.id == bindparam("b_id"), _CERTS.c.status == "reserved")
            .values(status="failed"))
RECONCILE_BATCH = 500  # rows per transaction: a backlog never holds the write lock for long
# Bounds of the per-process caches (entries); each is emptied whenever its epoch moves.
TEMPLATE_CACHE = 256
POLICY_CACHE = 1024
INVENTORY_CACHE = 4096
# An inventory of at most this many identifiers is held whole (one read per change), so
# a request's names cost no query even when no request asked for them before; a larger
# one is looked up by the request's names (cached by them).
INVENTORY_SNAPSHOT = 2000
_AUTHORITY_STATUS = select(cast(Table, Authority.__table__).c.status).where(
    cast(Table, Authority.__table__).c.id == bindparam("b_id"))


class IssuanceError(ApplianceError):
    """The request cannot be honoured as asked (a client error)."""

    code = "bad_request"
    acme_type = "badCSR"


class NotApprovedError(IssuanceError):
    """The CSR's key or signature algorithm, or the key over the certificate's lifetime, is
    not approved in the installation's mode (FIPS): a client error, 400 ``not_approved``."""

    code = "not_approved"


class CredentialNamesError(IssuanceError):
    """The CSR's names are not the names the credential authorizes. Nothing was reserved or
    signed, so the same credential may come back with a CSR that asks for its names (an
    ACME order stays ready for one)."""


class AuthorityUnavailable(ServerFault):
    """The issuing CA is out of service (revoked, retired): fail closed, not a client error."""

    code = "authority_unavailable"
    public_detail = True  # names the authority and its status, written for the client


@dataclass(frozen=True)
class Issued:
    certificate: x509.Certificate
    chain: list[x509.Certificate]  # issuer first, up to the root
    serial_hex: str
    # ``chain`` as PEM when the issuer already holds it (the pipeline's signer encodes its
    # chain once, when it is found); None: encoded from ``chain`` on each call.
    chain_pems: tuple[str, ...] | None = None

    def pem(self) -> str:
        return self.certificate.public_bytes(serialization.Encoding.PEM).decode()

    def chain_pem(self) -> list[str]:
        if self.chain_pems is not None:
            return list(self.chain_pems)
        return _pems(self.chain)


def _pems(certs: list[x509.Certificate]) -> list[str]:
    return [c.public_bytes(serialization.Encoding.PEM).decode() for c in certs]


@dataclass
class _Signer:
    """One authority as this process signs with it. Everything derived from its
    certificate and chain is computed here, once, when the signer is found (a changed
    authority or chain is a new ``_Signer``: ``Issuer._signer``), not on every request."""

    authority: Authority
    cert: x509.Certificate
    key: TokenPrivateKey
    chain: list[x509.Certificate]
    path: x509_path.Chain  # the chain's constraints, checked once, for every new certificate
    public_key: Any = None  # the CA certificate's key (signing.ca_public_key)
    subject: str = ""  # the CA's subject, RFC 4514 (what templates see)
    chain_pems: tuple[str, ...] = ()  # ``chain`` as PEM, as every response carries it

    def __post_init__(self) -> None:
        self.public_key = signing.ca_public_key(self.cert)
        self.subject = self.cert.subject.rfc4514_string()
        self.chain_pems = tuple(_pems(self.chain))


class Issuer:
    """Issues certificates for one process; caches the CA keys it has looked up."""

    def __init__(self, app: Appliance) -> None:
        self.app = app
        # authority id -> (signer, the authority epoch it was last found active under)
        self._signers: dict[int, tuple[_Signer, int | None]] = {}
        self._lock = threading.Lock()
        self._templates: EpochCache[str, str | None] = EpochCache("template", TEMPLATE_CACHE)
        self._policies: EpochCache[int | None, tuple[str | None, str | None]] = EpochCache(
            "policy", POLICY_CACHE)
        self._inventory: EpochCache[tuple[tuple[str, str], ...], inventory.Match | None] = (
            EpochCache("inventory", INVENTORY_CACHE))
        self._inventory_whole: EpochCache[str, inventory.Snapshot | None] = EpochCache(
            "inventory", 1)
        self.inventory_snapshot = INVENTORY_SNAPSHOT

    # -- the pipeline ----------------------------------------------------------

    def issue(self, req: SignRequest) -> Issued:
        actor = Actor(req.requester, "service")
        try:
            return self._issue(req, actor)
        except (IssuanceError, AuthorityUnavailable, policy.PolicyError,
                TemplateRefusal, TemplateError, TemplateInputError,
                inventory.InventoryError, lint.LintError, x509_path.PathError) as exc:
            self._audit_refusal(req, actor, exc)
            raise

    def _issue(self, req: SignRequest, actor: Actor) -> Issued:
        csr = req.csr
        if isinstance(csr, x509.Certificate):
            check_subject_key(csr.public_key())
            csr_names = policy.Names.from_certificate(csr)
        else:
            check_csr(csr)
            csr_names = policy.Names.from_csr(csr)
        if req.credential_names is not None:
            _check_names_match(csr_names, req.credential_names)
        with self.app.db.sessions() as db:  # one session for this request's reads
            # First: whatever a cache miss below reads is never older than these.
            epochs = req.epochs if req.epochs is not None else store_epochs.read(db)
            signer = self._signer(req.provisioner.authority_id, db, epochs)
            names = inventory.keys_of(_flat_names(csr_names))
            found = self._find_inventory(db, epochs, names)
            if req.provisioner.require_inventory and (found is None or found.unmatched):
                raise inventory.InventoryError(
                    "this provisioner requires every name to belong to one inventory record; "
                    + ("no record matches" if found is None else
                       "names without a record: " + ", ".join(v for _, v in found.unmatched)))
            template_name, template_source = self._template(db, req.provisioner, epochs)
            levels = [*req.extra_policy_levels,
                      *self.policy_levels(db, req.provisioner, epochs)]
            inventory_id = found.record.id if found else None
            inventory_view = found.template_view() if found else None
        start, end = self._validity(req, signer.cert)
        try:
            algorithms.check_strength(csr.public_key(), end, "the requested certificate")
            # ...and the issuing CA's signature on it is no stronger than the CA's key.
            algorithms.check_strength(signer.public_key, end,
                                      "the issuing CA's signature on the requested certificate")
        except algorithms.AlgorithmRefused as exc:
            raise _refused(exc) from None
        desc = template_render.render(
            template_name, template_source,
            TemplateInput.from_request(
                csr=csr, token=req.token_claims, inventory=inventory_view,
                data=req.template_data if req.provisioner.allow_template_data else {},
                provisioner={"name": req.provisioner.name, "type": req.provisioner.type},
                authority={"name": signer.authority.name,
                           "subject": signer.subject},
                validity={"not_before": start.isoformat(), "not_after": end.isoformat()},
            ))
        base = self.app.settings.config.service.public_base_url.rstrip("/")
        serial = rng.random_serial(self.app.pool)
        shard = crl_points.shard_of(serial, signer.authority, self.app.settings.config)
        desc = template_build.with_default_urls(
            desc, crl_urls=[crl_points.url(base, signer.authority.name, shard)],
            ocsp_urls=[f"{base}/ocsp"],
            ca_issuers_urls=[f"{base}/ca/{signer.authority.name}.crt"])
        builder = template_build.to_builder(
            desc, public_key=csr.public_key(), issuer=signer.cert, serial=serial,
            not_before=start, not_after=end)
        trial_key = signing.throwaway_key(signer.public_key)
        trial = builder.sign(trial_key, _hash(signer))
        policy.check(policy.Names.from_certificate(trial), levels)
        # As a relying party would see it under the whole chain (name constraints, path
        # length, validity nesting, policies, EKU): never sign what the chain forbids.
        signer.path.check(trial, "the requested certificate")
        findings = [
            f for f in lint.lint_leaf(trial.public_bytes(serialization.Encoding.DER))
            # pkilint only knows a few URI schemes (no spiffe:, urn:); SAN URIs were already
            # checked by the template model, so that one finding there is not a defect.
            if not (f.code == "pkix.invalid_uri_syntax" and "subjectAltName" in f.node)
            # RFC 5280's syntax has no wildcard; a leftmost "*" label (RFC 6125 §6.4.3, as
            # the name policy parsed it) is how every TLS client expects one.
            and not (f.code == "pkix.invalid_domain_name_syntax" and "subjectAltName" in f.node
                     and _wildcard_san(f.message or ""))
        ]
        lint.require_clean(
            findings, f"certificate for {trial.subject.rfc4514_string() or 'an empty subject'}")
        serial_hex = f"{serial:x}"
        row_id = self._reserve(req, signer, serial_hex, template_name, inventory_id, shard)
        try:
            # The token signs the trial's very TBS bytes (not a second encoding of them).
            cert = signing.sign_as_trial(trial, signer.key, _hash(signer))
            if cert.tbs_certificate_bytes != trial.tbs_certificate_bytes:
                raise SignatureCheckError("signed TBS differs from the linted one")
            # The signature was verified once already, by the token key's wrapper before it
            # released it (with the public key find_key matched to this CA's certificate),
            # over these TBS bytes, whose issuer is this CA's subject: a second
            # verify_directly_issued_by would check the same signature again.
            ocsp = self._sign_ocsp(row_id, signer, serial_hex)
            self._store(req, actor, row_id, cert, signer, template_name, found, ocsp)
        except BaseException as exc:
            self._fail(row_id, req, actor, exc)
            raise
        return Issued(cert, signer.chain, serial_hex, signer.chain_pems)

    # -- reservations whose request never finished -------------------------------

    def reconcile_abandoned(self, actor: Actor | None = None) -> int:
        """End reservations older than the reservation timeout as ``failed``; how many.

        A reservation is committed before the token signs; the request that made it ends it
        (issued, or failed). Only a request whose process died (a killed worker) or that
        could not write its failure (the database gone at that moment) leaves one behind.
        No certificate was handed out under it: the response is sent only after the store
        commits, and that store is conditional on the row still being ``reserved``, so a
        request that is merely slow and loses this race fails closed rather than issuing;
        the row keeps its serial (unique), so the serial is never used again.

        Safe to run from any number of workers and nodes at once (the sweeper in each, an
        operator's ``appliance cert reconcile``): the age is read from the row, not from
        anything in this process, and each row is ended by an update conditional on its
        status, so exactly one caller ends it and audits it. ``actor``: the operator who
        asked (the CLI); the sweeper's own runs are the system's."""
        timeout = reservation_timeout(self.app.settings.config)
        actor = actor or Actor("appliance", "system")
        ended = 0
        while True:
            before = datetime.now(UTC) - timedelta(seconds=timeout)
            # A read first (no write lock): that is all a sweep costs when nothing is due.
            with self.app.db.sessions() as db:
                due = db.execute(_ABANDONED, {"b_before": before,
                                              "b_limit": RECONCILE_BATCH}).all()
            if not due:
                break
            with self.app.db.transaction() as db:
                for row in due:
                    if db.execute(_ABANDON, {"b_id": row.id}).rowcount != 1:  # type: ignore[attr-defined]
                        continue  # another worker, node or operator ended it first
                    ended += 1
                    self.app.audit_log().append(
                        db, "certificate.reservation.abandoned", actor, outcome="failure",
                        object_ids={"serial": row.serial_hex,
                                    "provisioner": row.provisioner_name},
                        details={"reserved_at": str(row.reserved_at),
                                 "timeout_seconds": timeout,
                                 "reason": "the request that reserved this serial never "
                                           "finished (its worker died, or its failure could "
                                           "not be written); nothing was issued under it"})
            if len(due) < RECONCILE_BATCH:
                break
        if ended:
            log.warning("ended abandoned serial reservations", extra={"count": ended})
        return ended

    # -- pieces ----------------------------------------------------------------

    def _sign_ocsp(self, row_id: int, signer: _Signer, serial_hex: str
                   ) -> tuple[SignedResponse, CertStatus] | None:
        """The new certificate's OCSP responses ("good"), signed before the certificate is
        stored so that they are stored in the same transaction (``_store``): a certificate
        is never handed out without them. If signing fails the issuance stands and the
        pre-signer batch signs them (as before)."""
        cs = CertStatus(row_id, signer.authority.id, serial_hex, "issued")
        try:
            return ocsp_presign.signer_for(self.app).sign(cs), cs
        except Exception:
            log.exception("pre-signing the OCSP response of a new certificate failed; the "
                          "pre-signer batch will sign it", extra={"serial": serial_hex})
            return None

    def _signer(self, authority_id: int, db: Any, epochs: Epochs) -> _Signer:
        epoch = epochs.get("authority")
        with self._lock:
            cached = self._signers.get(authority_id)
        if cached is not None:
            signer, seen = cached
            if epoch is not None and seen == epoch:
                return signer  # no authority or key row changed since it was found active
            # Something changed: the status is read again, so a CA taken out of service
            # stops signing at once in every worker, not at their next restart.
            status = db.execute(_AUTHORITY_STATUS, {"b_id": authority_id}).scalar()
            if status == "active":
                with self._lock:
                    self._signers[authority_id] = (signer, epoch)
                return signer
            with self._lock:
                self._signers.pop(authority_id, None)
        with self.app.db.sessions() as db:
            ca = db.get(Authority, authority_id)
            if ca is None or ca.key_id is None:
                raise IssuanceError("the provisioner's authority cannot issue")
            if ca.status != "active":
                raise AuthorityUnavailable(f"authority {ca.name} is {ca.status}; nothing "
                                           "is issued")
            key_row = db.get(HsmKey, ca.key_id)
            assert key_row is not None
            cert = authz.certificate(ca)
            links = authz.chain_links(db, ca)
            db.expunge(ca)
        try:
            path = x509_path.Chain(links)
        except x509_path.PathError as exc:
            raise AuthorityUnavailable(f"authority {ca.name} cannot issue: its own chain does "
                                       f"not validate: {exc}") from exc
        pool = self.app.signing_pool()
        info = keys.find_key(pool, key_row.label, signing.ca_public_key(cert))
        signer = _Signer(ca, cert, token_private_key(pool, info), [lk.cert for lk in links],
                         path)
        with self._lock:
            self._signers[authority_id] = (signer, epoch)
        return signer

    def chain_constraints(self, authority_id: int) -> x509_path.Chain:
        """The issuing CA's chain as path validation sees it, without the token: for checks
        ahead of issuance (ACME identifiers at newOrder). Issuance checks again anyway."""
        with self._lock:
            cached = self._signers.get(authority_id)
        if cached is not None:
            return cached[0].path
        with self.app.db.sessions() as db:
            ca = db.get(Authority, authority_id)
            if ca is None:
                raise IssuanceError("the provisioner's authority cannot issue")
            links = authz.chain_links(db, ca)
        try:
            return x509_path.Chain(links)
        except x509_path.PathError as exc:
            raise AuthorityUnavailable(f"authority {ca.name} cannot issue: its own chain does "
                                       f"not validate: {exc}") from exc

    def _find_inventory(self, db: Any, epochs: Epochs, names: tuple[tuple[str, str], ...]
                        ) -> inventory.Match | None:
        if epochs.get("inventory") is not None:  # never a whole read on every request
            whole = self._inventory_whole.get(
                epochs, "", lambda: inventory.snapshot(db, self.inventory_snapshot))
            if whole is not None:
                return whole.find(names)
        return self._inventory.get(epochs, names, lambda: inventory.find_keys(db, names))

    def _template(self, db: Any, prov: ProvisionerContext, epochs: Epochs | None = None
                  ) -> tuple[str, str]:
        name = prov.template or "tls-server"

        def stored() -> str | None:
            found = db.execute(_TEMPLATE_SOURCE, {"b_name": name}).scalar()
            return None if found is None else str(found)

        source = stored() if epochs is None else self._templates.get(epochs, name, stored)
        if source is not None:
            return name, str(source)
        builtin = builtin_templates()
        if name not in builtin:
            raise IssuanceError(f"provisioner {prov.name} names template {name!r}, which does "
                                "not exist")
        return name, builtin[name]

    def policy_levels(self, db: Any, prov: ProvisionerContext, epochs: Epochs | None = None
                      ) -> list[tuple[str, policy.Policy | None]]:
        """The authority's and the provisioner's name policies, in the order checked.
        Read from ``db``, or with ``epochs`` (read earlier on this request) from this
        process's cache while no policy changed; the parsing is cached by the text."""

        def stored() -> tuple[str | None, str | None]:
            rows = db.execute(_POLICIES, {"b_prov": prov.id}).all()
            authority = next((r for r in rows if r.provisioner_id is None), None)
            mine = next((r for r in rows if r.provisioner_id == prov.id), None)
            return (authority.source if authority else None, mine.source if mine else None)

        ours, theirs = stored() if epochs is None else self._policies.get(
            epochs, prov.id, stored)
        return [
            ("authority", _parse_policy(ours, "authority policy") if ours else None),
            (f"provisioner {prov.name}", _parse_policy(theirs, f"{prov.name} policy")
             if theirs else None),
        ]

    def _validity(self, req: SignRequest, issuer: x509.Certificate) -> tuple[datetime, datetime]:
        claims = req.provisioner.claims
        now = datetime.now(UTC).replace(microsecond=0)
        # notBefore is backdated a little for clients with slow clocks; the lifetime counts
        # from now, so even a certificate of a few seconds is valid when it arrives.
        start = (req.not_before or now - BACKDATE).astimezone(UTC)
        if req.not_after is not None:
            end = req.not_after.astimezone(UTC)
        else:
            lifetime = req.lifetime or claims.default_duration
            if lifetime > MAX_LIFETIME:
                raise IssuanceError(f"requested duration {lifetime}s exceeds the longest "
                                    f"the appliance issues ({MAX_LIFETIME}s)")
            end = now + timedelta(seconds=lifetime)
        duration = (end - max(start, now)).total_seconds()
        if end <= now:
            raise IssuanceError("the requested validity ends in the past")
        if duration < claims.min_duration:
            raise IssuanceError(f"requested duration {int(duration)}s is below the minimum of "
                                f"{claims.min_duration}s")
        if duration > claims.max_duration:
            raise IssuanceError(f"requested duration {int(duration)}s exceeds the maximum of "
                                f"{claims.max_duration}s")
        if start < issuer.not_valid_before_utc:
            start = issuer.not_valid_before_utc
        if end > issuer.not_valid_after_utc:
            raise IssuanceError("the requested validity ends after the issuing CA's")
        return start.replace(microsecond=0), end.replace(microsecond=0)

    def _reserve(self, req: SignRequest, signer: _Signer, serial_hex: str, template: str,
                 inventory_id: int | None, crl_shard: int | None) -> int:
        # Committed before the token signs (Core: an INSERT or two, no unit of work), with
        # the one-time token's spend: a replay raises here and reserves nothing.
        with replay_refused(), self.app.db.write() as db:
            if req.token_spend is not None:
                spend(db, req.token_spend)
            result = db.execute(_RESERVE, dict(
                serial_hex=serial_hex, authority_id=signer.authority.id,
                provisioner_id=req.provisioner.id, provisioner_name=req.provisioner.name,
                requester=req.requester[:256], template=template,
                inventory_record_id=inventory_id, status="reserved",
                renewed_from=req.renewal_of, reserved_at=datetime.now(UTC),
                crl_shard=crl_shard,
                ra_path=json.dumps(req.ra_path) if req.ra_path is not None else None,
                request_context=json.dumps({"token": req.token_claims,
                                            "data": req.template_data or {}}, default=str)))
            key = result.inserted_primary_key
            if not key or key[0] is None:
                raise DatabaseError("the serial reservation returned no row id")
            return int(key[0])

    def _store(self, req: SignRequest, actor: Actor, row_id: int, cert: x509.Certificate,
               signer: _Signer, template: str, found: inventory.Match | None,
               ocsp: tuple[SignedResponse, CertStatus] | None) -> None:
        der = cert.public_bytes(serialization.Encoding.DER)
        sans = _san_list(cert)
        subject = cert.subject.rfc4514_string()
        fingerprint = hashlib.sha256(der).hexdigest()
        serial_hex = f"{cert.serial_number:x}"
        with self.app.db.transaction() as db:
            # Only the reservation this request made becomes the issued certificate.
            done = db.execute(_ISSUED, dict(
                b_id=row_id, status="issued", der=der, subject=subject, sans=json.dumps(sans),
                not_before=cert.not_valid_before_utc, not_after=cert.not_valid_after_utc,
                fingerprint_sha256=fingerprint, issued_at=datetime.now(UTC)))
            if done.rowcount != 1:  # type: ignore[attr-defined]
                raise DatabaseError(f"serial {serial_hex}: the reservation is gone")
            self.app.audit_log().append(
                db, "certificate.renewed" if req.renewal_of else "certificate.issued", actor,
                object_ids={"serial": serial_hex, "authority": signer.authority.name,
                            "provisioner": req.provisioner.name},
                details={"subject": subject, "sans": sans, "template": template,
                         "inventory": found.record.name if found else None,
                         "not_before": cert.not_valid_before_utc.isoformat(),
                         "not_after": cert.not_valid_after_utc.isoformat(),
                         "fingerprint_sha256": fingerprint,
                         "renewal_of": req.renewal_of,
                         "renewed_after_expiry": req.after_expiry,
                         **_ra_detail(req)})
            if ocsp is not None:
                # Signed for "issued", which this transaction set just above under its write
                # lock (rowcount checked): the status it was signed for is the row's status,
                # so it is stored as is (what ocsp.presign.store_signed checks, without
                # re-reading), with the batch's own statement.
                signed, _ = ocsp
                db.execute(ocsp_presign.upsert_statement(self.app.db.dialect),
                           ocsp_presign.row_values(signed))

    def _fail(self, row_id: int, req: SignRequest, actor: Actor, exc: BaseException) -> None:
        with self.app.db.transaction() as db:
            row = db.get(Certificate, row_id)
            if row is not None and row.status == "reserved":
                row.status = "failed"
            self.app.audit_log().append(
                db, "certificate.failed", actor, outcome="failure",
                object_ids={"serial": row.serial_hex if row else None,
                            "provisioner": req.provisioner.name},
                details={"error": type(exc).__name__, "message": str(exc)[:500],
                         **_ra_detail(req)})

    def _audit_refusal(self, req: SignRequest, actor: Actor, exc: ApplianceError) -> None:
        # A refused request spends its token too (first, so a replay writes no refusal):
        # a one-time token is good for one decision, whatever it is, as before the spend
        # moved into the pipeline. A replay is answered as one (``TokenError``).
        with replay_refused(), self.app.db.transaction() as db:
            if req.token_spend is not None:
                spend(db, req.token_spend)
            self.app.audit_log().append(
                db, "certificate.refused", actor, outcome="denied",
                object_ids={"provisioner": req.provisioner.name},
                details={"error": exc.code, "message": str(exc)[:1000],
                         "csr_subject": req.csr.subject.rfc4514_string(),
                         "renewal_of": req.renewal_of, **_ra_detail(req)})


def _ra_detail(req: SignRequest) -> dict[str, Any]:
    """``ra_path`` in an audit record of a request that came through RAs (absent otherwise,
    so records of direct requests read as before)."""
    return {"ra_path": list(req.ra_path)} if req.ra_path is not None else {}


def reservation_timeout(cfg: ApplianceConfig) -> int:
    """``service.reservation_timeout_seconds``, or twice what one request may take (its
    timeout plus a wait for the database lock): a request still at work is never swept by
    default, and a dead one's serial is settled within minutes."""
    configured = cfg.service.reservation_timeout_seconds
    if configured is not None:
        return configured
    return int(2 * (cfg.service.timeout_seconds + cfg.database.busy_timeout_seconds))


@lru_cache(maxsize=256)
def _parse_policy(text: str, source: str) -> policy.Policy:
    return policy.parse_policy(text, source)  # immutable (frozen model): safe to share


def check_csr(csr: x509.CertificateSigningRequest) -> None:
    """A client's CSR: its signature verifies, and its key and hash are ones the algorithm
    table approves. The algorithms are asked first: a SHA-1 signature does not verify in
    ``cryptography`` at all, and its requester is owed the reason (SHA-1), not "does not
    verify"."""
    check_subject_key(csr.public_key())
    try:
        algorithms.check_csr_signature(csr)
    except algorithms.AlgorithmRefused as exc:
        raise _refused(exc) from None
    if not csr_module.signature_valid(csr):
        raise IssuanceError("the CSR signature does not verify")


def check_subject_key(key: Any) -> None:
    """The key a certificate is to be issued for (from a CSR, or a certificate renewed)."""
    try:
        algorithms.check_csr_key(key)
    except algorithms.AlgorithmRefused as exc:
        raise _refused(exc) from None


def _refused(exc: algorithms.AlgorithmRefused) -> IssuanceError:
    """The table's refusal as the client's error, in the table's words: ``not_approved``
    under a mode (FIPS), today's ``bad_request`` under the default table."""
    if isinstance(exc, algorithms.NotApproved):
        return NotApprovedError(str(exc))
    return IssuanceError(str(exc))


def _flat_names(names: policy.Names) -> list[tuple[str, str]]:
    out = [("dns", d) for d in names.dns] + [("ip", str(i)) for i in names.ip]
    out += [("email", e) for e in names.email] + [("uri", u) for u in names.uri]
    if names.cn:
        out.append(("cn", names.cn))
    return out


def _check_names_match(csr_names: policy.Names, allowed: list[str]) -> None:
    """Every name in the CSR (SANs, and the CN) must be one the credential authorizes."""
    asked = {v.lower() for _, v in _flat_names(csr_names)}
    granted = {a.lower() for a in allowed}
    extra = sorted(asked - granted)
    if extra:
        raise CredentialNamesError("the CSR asks for names the token does not authorize: "
                                   + ", ".join(extra))
    missing = sorted(granted - asked)
    if missing:
        raise CredentialNamesError("the token authorizes names the CSR does not ask for: "
                                   + ", ".join(missing))


def _wildcard_san(message: str) -> bool:
    """Whether pkilint's message names a well-formed wildcard DNS name ("*.host")."""
    start = message.find('"*.')
    if start < 0:
        return False
    name = message[start + 1:message.find('"', start + 1)]
    try:
        return policy.parse_dns_name(name).wildcard
    except policy.MalformedName:
        return False


def _san_list(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(getattr(n, "value", n)) for n in san]


def _hash(signer: _Signer) -> algorithms.CaHash:
    # Asked of the table on every certificate (a mode may change it); the key is parsed once.
    return algorithms.ca_signature_hash(signer.public_key)
