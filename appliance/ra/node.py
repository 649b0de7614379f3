"""The RA node: what it decides itself, and how it forwards the rest upstream.

An RA node holds no CA key. Its ``Forwarder`` stands where the CA's ``Issuer`` stands (the
same duck interface, so ``/1.0/sign``, ``/1.0/renew`` and ACME finalize run unchanged):
it applies this node's own rules first (the CSR, the credential's names, this node's
name policies, validity within this node's claims), then forwards over mutual TLS with a
hop assertion signed by the credential key in the token, checks what comes back (the
CSR's key, the names, the chain to the upstream root), keeps a copy (so renewal and
revocation by the certificate's owner work here too) and audits the hop
(``ra.forwarded``). The upstream decides again: an RA narrows, never widens.

A refusal at this hop says so (``hop`` = this RA, message ``refused at <RA>: ...``); a
refusal upstream is passed down unchanged (its ``hop`` names the node that refused); an
upstream that cannot be reached is a 503 ``upstream_unavailable`` and nothing is stored.
"""

from __future__ import annotations

import hashlib
import json
import threading
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy import Table, insert, select

from appliance import durations, lint, policy
from appliance.audit.log import Actor
from appliance.ca import authorities as authz
from appliance.errors import ApplianceError, DatabaseError, ServerFault
from appliance.inventory import match as inventory
from appliance.issuance import pipeline
from appliance.issuance import spend as spending
from appliance.issuance.csr import load_csr
from appliance.issuance.pipeline import IssuanceError, Issued
from appliance.issuance.request import MAX_CERT_LIFETIME, ProvisionerContext, SignRequest
from appliance.provisioners.authorize import context_of
from appliance.provisioners.settings import Claims, ProvisionerSettings
from appliance.ra import assertion, credential, registry
from appliance.ra.children import ChildHop
from appliance.ra.errors import UpstreamRefused, UpstreamUnavailable
from appliance.ra.upstream import Upstream
from appliance.runtime import Appliance
from appliance.store.models import Authority, Certificate, NamePolicy, Provisioner
from appliance.templates.errors import TemplateError, TemplateInputError, TemplateRefusal
from appliance.x509 import path as x509_path

_CERTS = cast(Table, Certificate.__table__)
# What this hop refuses itself: the client's request, never our fault.
LOCAL_REFUSALS = (IssuanceError, policy.PolicyError, TemplateRefusal, TemplateError,
                  TemplateInputError, inventory.InventoryError, lint.LintError,
                  x509_path.PathError)
BACKDATE = timedelta(seconds=60)
MAX_REPLY_CERTS = 10


class UpstreamAnswerInvalid(ServerFault):
    """The upstream answered 2xx with something this node does not accept (another key or
    other names than asked, a chain that misses the upstream root): nothing is stored or
    handed out. Not ``deferred``: forwarding the same request again would only make the
    upstream issue again, so an ACME order goes back to ready instead of being retried."""

    code = "upstream_answer_invalid"
    public_detail = True


def refused_here(exc: ApplianceError, name: str) -> ApplianceError:
    """Mark a local refusal as this hop's: ``hop`` for the JSON error, and the message."""
    if getattr(exc, "hop", None) is None:
        text = str(exc)
        if not text.startswith("refused at "):
            exc.args = (f"refused at {name}: {text}",)
        exc.hop = name  # type: ignore[attr-defined]
    return exc


def names_of(cert_or_csr: x509.Certificate | x509.CertificateSigningRequest) -> list[str]:
    """The names of a CSR or certificate as the hop assertion carries them."""
    return list(assertion.names_of(cert_or_csr))


def _epoch(value: datetime | None) -> int | None:
    return int(value.timestamp()) if value is not None else None


def _rfc3339(value: datetime | None) -> str | None:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if value else None


class Node:
    """What every forward of this node shares: its name, its credential, its upstream."""

    def __init__(self, app: Appliance) -> None:
        self.app = app
        name = app.settings.config.ra.name
        if app.settings.config.role != "ra" or not name:
            raise credential.NotImported("this node is not an RA (role: ra with ra.name)")
        self.name = name
        self._upstream: Upstream | None = None
        self._lock = threading.Lock()

    @property
    def upstream(self) -> Upstream:
        with self._lock:
            if self._upstream is None:
                # The token's module is initialised by python-pkcs11 first: the TLS engine
                # (libp11) then shares it; the other order fails to initialise it twice.
                self.app.signing_pool()
                self._upstream = Upstream.from_app(self.app)
            return self._upstream

    def sign_hop(self, *, op: str, subject_sha256: str, names: list[str], requester: str,
                 provisioner: dict[str, str], not_before: int | None = None,
                 not_after: int | None = None, lifetime: int | None = None,
                 reason: str | None = None, register: dict[str, Any] | None = None,
                 below: str | None = None) -> str:
        """This hop's assertion, signed by the credential key in the token."""
        cred = credential.current(self.app)
        _, key = credential.token_key(self.app)
        hop = assertion.Hop(
            iss=self.name, op=cast(Any, op), subject_sha256=subject_sha256,
            names=tuple(names),
            not_before=not_before, not_after=not_after, lifetime=lifetime,
            requester=requester[:256], provisioner=provisioner, reason=reason,
            register=register, below=below)
        return assertion.make(key, cred.leaf, hop)

    def post(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """Forward; a 4xx is ``UpstreamRefused``, unreachable/5xx ``UpstreamUnavailable``."""
        try:
            reply = self.upstream.post(path, body)
        except UpstreamUnavailable as exc:
            if exc.hop is None:  # this node could not reach its upstream: it says so
                exc.hop = self.name
            raise
        return reply.status, reply.body

    def audit(self, db: Any, actor: Actor, *, op: str, subject_sha256: str, decision: str,
              serial: str | None = None, error: ApplianceError | None = None,
              provisioner: str | None = None, extra: dict[str, Any] | None = None) -> None:
        outcome = {"forwarded": "success", "refused": "denied"}.get(decision, "failure")
        self.app.audit_log().append(
            db, "ra.forwarded", actor, outcome=outcome,
            object_ids={"ra": self.name, "op": op, "serial": serial,
                        "provisioner": provisioner},
            details={"request_sha256": subject_sha256, "decision": decision,
                     "upstream": self.app.settings.config.ra.upstream_url,
                     "error": error.code if error else None,
                     "hop": getattr(error, "hop", None) if error else None,
                     "message": str(error)[:500] if error else None, **(extra or {})})

    def audit_alone(self, actor: Actor, **kw: Any) -> None:
        with self.app.db.transaction() as db:
            self.audit(db, actor, **kw)


class Forwarder:
    """The RA node's issuer: ``issue`` decides locally, then forwards (see the module)."""

    def __init__(self, app: Appliance) -> None:
        self.app = app
        self.node = Node(app)
        self._issuer = pipeline.Issuer(app)  # only its policy and chain readers are used

    # -- the Issuer interface ---------------------------------------------------------

    def policy_levels(self, db: Any, prov: ProvisionerContext
                      ) -> list[tuple[str, policy.Policy | None]]:
        return self._issuer.policy_levels(db, prov)

    def chain_constraints(self, authority_id: int) -> x509_path.Chain:
        return self._issuer.chain_constraints(authority_id)

    def reconcile_abandoned(self, actor: Actor | None = None) -> int:
        return 0  # an RA reserves no serials: nothing can be abandoned here

    def issue(self, req: SignRequest) -> Issued:
        actor = Actor(req.requester, "service")
        node = self.node
        if req.token_spend is not None:
            # The request's one-time token, spent before anything is decided or forwarded
            # (in a transaction of its own: this node reserves no serial to spend it with):
            # a replay is refused here, in every worker of the node.
            with spending.replay_refused(), self.app.db.write() as db:
                spending.spend(db, req.token_spend)
        renewal = isinstance(req.csr, x509.Certificate)
        op = "renew" if renewal else "sign"
        der = req.csr.public_bytes(serialization.Encoding.DER)
        subject = assertion.digest(der)
        try:
            names, validity = self._local_checks(req)
        except LOCAL_REFUSALS as exc:
            node.audit_alone(actor, op=op, subject_sha256=subject, decision="refused",
                             error=exc, provisioner=req.provisioner.name)
            raise refused_here(exc, node.name) from None
        start, end, lifetime = validity
        token = node.sign_hop(
            op=op, subject_sha256=subject, names=names, requester=req.requester,
            provisioner={"name": req.provisioner.name, "type": req.provisioner.type},
            not_before=_epoch(req.not_before), not_after=_epoch(end if req.not_after else None),
            lifetime=None if renewal or (req.lifetime is None and req.provisioner.id is None)
            else lifetime)
        pem = req.csr.public_bytes(serialization.Encoding.PEM).decode()
        body: dict[str, Any]
        if renewal:
            path, body = "/1.0/ra/renew", {"certificate": pem, "assertion": token}
        else:
            path = "/1.0/ra/sign"
            body = {"csr": pem, "assertion": token}
            if req.not_before is not None:
                body["notBefore"] = _rfc3339(start)
            if req.not_after is not None:
                body["notAfter"] = _rfc3339(end)
            elif req.lifetime is not None or req.provisioner.id is not None:
                body["lifetime"] = lifetime
                if req.lifetime is None:
                    # Nobody asked: this node's default is a ceiling, not a demand, so a
                    # tighter cap above clips it (as the CA's own default is) rather than
                    # refusing a request that asked for nothing.
                    body["lifetimeIsDefault"] = True
            # else: the appliance's own TLS certificate, the upstream's default lifetime
            if req.template_data and req.provisioner.allow_template_data:
                body["templateData"] = req.template_data
        try:
            _, reply = node.post(path, body)
            cert, chain = self._check_reply(req, reply, names)
        except (UpstreamRefused, UpstreamUnavailable) as exc:
            node.audit_alone(actor, op=op, subject_sha256=subject,
                             decision="refused upstream" if isinstance(exc, UpstreamRefused)
                             else "upstream unavailable", error=exc,
                             provisioner=req.provisioner.name)
            raise
        except ApplianceError as exc:
            node.audit_alone(actor, op=op, subject_sha256=subject, decision="bad answer",
                             error=exc, provisioner=req.provisioner.name)
            raise UpstreamAnswerInvalid(f"the upstream's answer was not acceptable: {exc}; "
                                        "nothing was issued here") from None
        ra_path = reply.get("raPath")
        self._store(req, actor, cert, chain, subject, op,
                    ra_path if isinstance(ra_path, list) else None)
        return Issued(cert, chain, f"{cert.serial_number:x}")

    # -- pieces ------------------------------------------------------------------------

    def _local_checks(self, req: SignRequest) -> tuple[list[str], tuple[datetime, datetime,
                                                                         int]]:
        csr = req.csr
        if isinstance(csr, x509.Certificate):
            pipeline.check_subject_key(csr.public_key())
            csr_names = policy.Names.from_certificate(csr)
        else:
            pipeline.check_csr(csr)
            csr_names = policy.Names.from_csr(csr)
        if req.credential_names is not None:
            pipeline._check_names_match(csr_names, req.credential_names)
        with self.app.db.sessions() as db:
            levels = [*req.extra_policy_levels, *self.policy_levels(db, req.provisioner)]
        policy.check(csr_names, levels)
        return names_of(csr), self._validity(req)

    def _validity(self, req: SignRequest) -> tuple[datetime, datetime, int]:
        """As the CA computes it, within this node's claims (an RA never lengthens)."""
        claims = req.provisioner.claims
        now = datetime.now(UTC).replace(microsecond=0)
        if isinstance(req.csr, x509.Certificate):  # a renewal: the original's duration
            span = req.csr.not_valid_after_utc - req.csr.not_valid_before_utc
            seconds = req.lifetime or int(span.total_seconds())
            return now - BACKDATE, now + timedelta(seconds=seconds), seconds
        start = (req.not_before or now - BACKDATE).astimezone(UTC)
        if req.not_after is not None:
            end = req.not_after.astimezone(UTC)
        else:
            lifetime = req.lifetime or claims.default_duration
            if lifetime > MAX_CERT_LIFETIME:
                raise IssuanceError(f"requested duration {lifetime}s exceeds the longest "
                                    f"the appliance issues ({MAX_CERT_LIFETIME}s)")
            end = now + timedelta(seconds=lifetime)
        duration = int((end - max(start, now)).total_seconds())
        if end <= now:
            raise IssuanceError("the requested validity ends in the past")
        if duration < claims.min_duration:
            raise IssuanceError(f"requested duration {duration}s is below the minimum of "
                                f"{claims.min_duration}s")
        if duration > claims.max_duration:
            raise IssuanceError(f"requested duration {duration}s exceeds the maximum of "
                                f"{claims.max_duration}s")
        return start, end, duration

    def _check_reply(self, req: SignRequest, reply: dict[str, Any], names: list[str]
                     ) -> tuple[x509.Certificate, list[x509.Certificate]]:
        """The certificate is for the CSR's key and names and chains to the upstream root;
        returns it and its chain (issuer first, up to the root)."""
        crt, chain_pems = reply.get("crt"), reply.get("certChain")
        if not isinstance(crt, str) or not isinstance(chain_pems, list) \
                or not all(isinstance(p, str) for p in chain_pems) \
                or len(chain_pems) > MAX_REPLY_CERTS:
            raise IssuanceError("the upstream's answer has no certificate chain")
        cert = credential.load_pems(crt.encode(), "the upstream's certificate")[0]
        rest = [c for p in chain_pems for c in credential.load_pems(p.encode(), "certChain")]
        rest = [c for c in rest if c != cert]
        spki = serialization.PublicFormat.SubjectPublicKeyInfo
        enc = serialization.Encoding.DER
        if cert.public_key().public_bytes(enc, spki) != \
                req.csr.public_key().public_bytes(enc, spki):
            raise IssuanceError("the upstream's certificate is not for the CSR's key")
        if names_of(cert) != names:
            raise IssuanceError("the upstream's certificate names other names than asked")
        roots = credential.upstream_roots(self.app)
        credential.chain_reaches(cert, rest, roots)
        root_subjects = {r.subject.public_bytes() for r in roots}
        if not rest or rest[-1].subject.public_bytes() not in root_subjects:
            top = rest[-1] if rest else cert
            rest = [*rest, *(r for r in roots
                             if r.subject.public_bytes() == top.issuer.public_bytes())][:]
        return cert, rest

    def _store(self, req: SignRequest, actor: Actor, cert: x509.Certificate,
               chain: list[x509.Certificate], subject: str, op: str,
               ra_path: list[Any] | None) -> None:
        """A copy of what the upstream issued (status issued), and the hop's audit record,
        in one transaction."""
        der = cert.public_bytes(serialization.Encoding.DER)
        serial_hex = f"{cert.serial_number:x}"
        issuer_fp = authz.fingerprint(chain[0]) if chain else None
        with self.app.db.transaction() as db:
            authority = db.scalars(select(Authority).where(
                Authority.fingerprint_sha256 == issuer_fp)).one_or_none()
            if authority is None:  # an upstream CA this node has not seen yet
                authority = credential.store_authorities(
                    self.app, db, [cert, *chain[:-1]], chain[-1:], "ra forward")
            now = datetime.now(UTC)
            values: dict[str, Any] = dict(
                serial_hex=serial_hex, authority_id=authority.id,
                provisioner_id=req.provisioner.id, provisioner_name=req.provisioner.name,
                requester=req.requester[:256], template="upstream",
                inventory_record_id=None, status="issued", renewed_from=req.renewal_of,
                reserved_at=now, issued_at=now, der=der,
                subject=cert.subject.rfc4514_string(),
                sans=json.dumps(pipeline._san_list(cert)),
                not_before=cert.not_valid_before_utc, not_after=cert.not_valid_after_utc,
                fingerprint_sha256=hashlib.sha256(der).hexdigest(),
                request_context=json.dumps({"token": req.token_claims,
                                            "data": req.template_data or {}}, default=str))
            if ra_path is not None and "ra_path" in _CERTS.c:
                values["ra_path"] = json.dumps([str(p)[:64] for p in ra_path][:16])
            result = db.execute(insert(_CERTS).values(**values))
            if not result.inserted_primary_key:  # type: ignore[attr-defined]
                raise DatabaseError("the forwarded certificate's copy returned no row id")
            self.node.audit(db, actor, op=op, subject_sha256=subject, decision="forwarded",
                            serial=serial_hex, provisioner=req.provisioner.name,
                            extra={"ra_path": ra_path})


# -- this node's child RAs (``/1.0/ra/*`` on an RA node) --------------------------------

PATHS = {"sign": "/1.0/ra/sign", "renew": "/1.0/ra/renew", "revoke": "/1.0/ra/revoke",
         "register": "/1.0/ra/register", "credential-renew": "/1.0/ra/credential/renew"}
_nodes: dict[int, tuple[Appliance, Node]] = {}
_nodes_lock = threading.Lock()


def node_of(app: Appliance) -> Node:
    """The ``Node`` of this process's appliance (one upstream client per process)."""
    with _nodes_lock:
        found = _nodes.get(id(app))
        if found is None or found[0] is not app:
            found = (app, Node(app))
            _nodes[id(app)] = found
        return found[1]


def forward_child(app: Appliance, op: str, body: dict[str, Any], child: ChildHop
                  ) -> tuple[int, dict[str, Any]]:
    """A child RA's request, authenticated by ``web/ra.py`` (``child``: a ``ChildHop``):
    this node's rules for that child (its ``ra`` provisioner's claims and policy, and the
    authority's policy), then forwarded with this hop's assertion wrapped around the
    child's (``below``, verbatim). Returns the upstream's status and body."""
    node = node_of(app)
    if op not in PATHS:
        raise IssuanceError(f"unknown RA operation {op!r}")
    hop, row = child.hop, child.row
    actor = Actor(f"ra:{row.name}", "service")
    ctx = context_of(app, row.id, row.name, "ra", row.config, row.authority_id)
    try:
        body = _child_checks(app, op, body, hop, ctx)
    except LOCAL_REFUSALS as exc:
        node.audit_alone(actor, op=op, subject_sha256=hop.subject_sha256, decision="refused",
                         error=exc, provisioner=row.name)
        raise refused_here(exc, node.name) from None
    token = node.sign_hop(
        op=op, subject_sha256=hop.subject_sha256, names=list(hop.names),
        requester=row.name, provisioner={"name": row.name, "type": "ra"},
        not_before=hop.not_before, not_after=hop.not_after,
        lifetime=body.get("lifetime") if op == "sign" else hop.lifetime,
        reason=hop.reason, register=hop.register, below=body.get("assertion"))
    try:
        status, reply = node.post(PATHS[op], {**body, "assertion": token})
    except (UpstreamRefused, UpstreamUnavailable) as exc:
        node.audit_alone(actor, op=op, subject_sha256=hop.subject_sha256,
                         decision="refused upstream" if isinstance(exc, UpstreamRefused)
                         else "upstream unavailable", error=exc, provisioner=row.name)
        raise
    serial = reply.get("serial")
    with app.db.transaction() as db:
        if op == "credential-renew" and hop.below is None:
            # The child's own credential, renewed upstream: this node's record follows.
            registry.set_credential(db, row.name, _reply_chain(app, reply)[0])
        node.audit(db, actor, op=op, subject_sha256=hop.subject_sha256, decision="forwarded",
                   serial=serial if isinstance(serial, str) else None, provisioner=row.name,
                   extra={"child": row.name})
    return status, reply


def _child_checks(app: Appliance, op: str, body: dict[str, Any], hop: assertion.Hop,
                  ctx: ProvisionerContext) -> dict[str, Any]:
    """This hop's own rules for what a child asks (the upstream applies its own again);
    returns the body to forward (a default lifetime clipped to this hop's cap)."""
    if op not in ("sign", "renew"):
        return body  # revoke, register, credential renewal: decided upstream, on the path
    field = "csr" if op == "sign" else "certificate"
    text = body.get(field)
    if not isinstance(text, str):
        raise IssuanceError(f"{field} is required (PEM)")
    item: x509.Certificate | x509.CertificateSigningRequest
    if op == "sign":
        item = load_csr(text, "csr")
        pipeline.check_csr(item)
        names = policy.Names.from_csr(item)
    else:
        item = credential.load_pems(text.encode(), "certificate")[0]
        names = policy.Names.from_certificate(item)
    if names_of(item) != sorted(hop.names):
        raise IssuanceError("the assertion's names are not the request's")
    with app.db.sessions() as db:
        levels = pipeline.Issuer(app).policy_levels(db, ctx)
    policy.check(names, levels)
    if op == "sign":
        now = int(datetime.now(UTC).timestamp())
        start = max(hop.not_before or now, now)
        lifetime = hop.lifetime or ctx.claims.default_duration
        if (body.get("lifetimeIsDefault") is True and hop.not_after is None
                and lifetime > ctx.claims.max_duration):
            # The child's default, not a demand: clipped to what this hop allows.
            lifetime = ctx.claims.max_duration
            body = {**body, "lifetime": lifetime}
        end = hop.not_after or (now + lifetime)
        if end - start > ctx.claims.max_duration:
            raise IssuanceError(f"requested duration {end - start}s exceeds the maximum of "
                                f"{ctx.claims.max_duration}s")
    return body


def register_child(app: Appliance, name: str, csr: x509.CertificateSigningRequest,
                   max_duration: int | str | None, policy_text: str | None,
                   requester: str = "operator") -> list[str]:
    """``provisioner add NAME --type ra`` on an RA node: the child's credential is issued
    upstream (``/1.0/ra/register``, this hop's assertion carrying the registration), the
    child recorded here too (its ``ra`` provisioner row, claims and policy: this node
    authenticates it and applies them to what it forwards), and its chain (PEM, leaf
    first, without the root) returned for the operator to hand to the child.
    ``max_duration``: seconds (or a duration text), carried as a duration text."""
    node = node_of(app)
    actor = Actor(requester, "operator")
    seconds = durations.parse(max_duration) if isinstance(max_duration, str) else max_duration
    as_text = durations.format_seconds(seconds) if seconds is not None else None
    der = csr.public_bytes(serialization.Encoding.DER)
    subject = assertion.digest(der)
    settings = ProvisionerSettings(claims=Claims(max_duration=seconds))
    with app.db.sessions() as db:
        issuing = authz.get(db, app.settings.config.service.issuing_authority).id
        if db.scalars(select(Provisioner.id).where(Provisioner.name == name)).first():
            raise registry.RegistryError(f"a provisioner named {name!r} already exists")
    token = node.sign_hop(
        op="register", subject_sha256=subject, names=names_of(csr), requester=requester,
        provisioner={"name": node.name, "type": "ra"},
        register={"name": name, "max_duration": as_text, "policy": policy_text})
    body = {"csr": csr.public_bytes(serialization.Encoding.PEM).decode(), "assertion": token}
    try:
        _, reply = node.post(PATHS["register"], body)
    except (UpstreamRefused, UpstreamUnavailable) as exc:
        node.audit_alone(actor, op="register", subject_sha256=subject,
                         decision="refused upstream" if isinstance(exc, UpstreamRefused)
                         else "upstream unavailable", error=exc, extra={"child": name})
        raise
    chain = _reply_chain(app, reply)
    leaf = chain[0]
    serial = f"{leaf.serial_number:x}"
    with app.db.transaction() as db:
        row = registry.record(db, name, leaf, authority_id=issuing, settings=settings)
        if policy_text is not None:
            db.add(NamePolicy(level="provisioner", provisioner_id=row.id, source=policy_text,
                              updated_at=datetime.now(UTC)))
        app.audit_log().append(
            db, "ra.registered", actor, object_ids={"provisioner": name, "serial": serial},
            details={"type": "ra", "through": node.name,
                     "settings": settings.model_dump(), "policy": policy_text,
                     "spki_sha256": registry.spki_digest(leaf.public_key()),
                     "not_after": leaf.not_valid_after_utc.isoformat()})
        node.audit(db, actor, op="register", subject_sha256=subject, decision="forwarded",
                   serial=serial, extra={"child": name})
    roots = credential.upstream_roots(app)
    return [c.public_bytes(serialization.Encoding.PEM).decode() for c in chain
            if c not in roots]


def _reply_chain(app: Appliance, reply: dict[str, Any]) -> list[x509.Certificate]:
    """A credential the upstream issued (``crt``/``certChain``), checked to chain to the
    upstream root; leaf first."""
    pems = reply.get("certChain") or [reply.get("crt")]
    if not isinstance(pems, list) or not all(isinstance(p, str) for p in pems):
        raise UpstreamUnavailable("the upstream's answer has no certificate chain")
    chain = [c for p in pems for c in credential.load_pems(p.encode(), "certChain")]
    credential.chain_reaches(chain[0], chain[1:], credential.upstream_roots(app))
    return chain


def renew_credential(app: Appliance, actor: Actor) -> x509.Certificate:
    """This node's own credential, renewed through its upstream (see ``credential``)."""
    node = node_of(app)

    def post(path: str, csr_pem: bytes) -> dict[str, Any]:
        csr = x509.load_pem_x509_csr(csr_pem)
        token = node.sign_hop(op="credential-renew",
                              subject_sha256=assertion.digest(
                                  csr.public_bytes(serialization.Encoding.DER)),
                              names=names_of(csr), requester=node.name,
                              provisioner={"name": node.name, "type": "ra"})
        _, reply = node.post(path, {"csr": csr_pem.decode(), "assertion": token})
        return reply

    return credential.renew(app, post, actor)


def forward_revoke(app: Appliance, serial_hex: str, reason: str, requester: str,
                   provisioner: dict[str, str]) -> dict[str, Any]:
    """``/1.0/revoke`` on an RA node, after the local rules (the requester authenticated
    for this certificate, which this node's copy shows it forwarded): forwarded as
    ``/1.0/ra/revoke``; the CA revokes (and signs its CRL and OCSP), then the local copy is
    marked revoked too, in one transaction with this hop's audit record."""
    node = node_of(app)
    actor = Actor(requester, "service")
    subject = assertion.serial_digest(serial_hex)
    with app.db.sessions() as db:
        row = db.scalars(select(Certificate).where(
            Certificate.serial_hex == serial_hex)).one_or_none()
        if row is None or row.status not in ("issued", "revoked"):
            raise refused_here(IssuanceError(
                f"no certificate with serial {serial_hex} was issued through this RA"),
                node.name)
    token = node.sign_hop(op="revoke", subject_sha256=subject, names=[], requester=requester,
                          provisioner=provisioner, reason=reason)
    try:
        _, reply = node.post(PATHS["revoke"], {"serial": serial_hex, "reasonCode": reason,
                                               "assertion": token})
    except (UpstreamRefused, UpstreamUnavailable) as exc:
        node.audit_alone(actor, op="revoke", subject_sha256=subject, serial=serial_hex,
                         decision="refused upstream" if isinstance(exc, UpstreamRefused)
                         else "upstream unavailable", error=exc,
                         provisioner=provisioner.get("name"))
        raise
    with app.db.transaction() as db:
        row = db.scalars(select(Certificate).where(
            Certificate.serial_hex == serial_hex)).one_or_none()
        if row is not None and row.status == "issued":
            row.status = "revoked"
            row.revoked_at = datetime.now(UTC).replace(microsecond=0)
            row.revocation_reason = str(reply.get("reason") or reason)[:32]
        node.audit(db, actor, op="revoke", subject_sha256=subject, decision="forwarded",
                   serial=serial_hex, provisioner=provisioner.get("name"),
                   extra={"reason": reply.get("reason") or reason})
    return reply
