"""Full CRLs per issuing authority.

- Entries: every revoked certificate of the authority that has not expired yet
  (and, for a CA that issued CAs, its revoked subordinate authorities).
- The number strictly increases per authority, across restarts and nodes: it
  is ``max(number) + 1`` under the ``(authority, number)`` unique constraint,
  retried on a collision.
- A critical Issuing Distribution Point names exactly the URL the
  certificates carry in their CRL DP (``{public_base_url}/crl/{name}.crl``),
  scoped to end-entity certificates for an issuing CA, CA certificates for a
  root.
- nextUpdate = thisUpdate + ``revocation.crl_validity`` (at most 10 days).
- The whole list goes to the builder's constructor at once (adding entries one
  by one is quadratic), and the CRL is linted on a trial signature first; above
  ``crl_full_lint_max_entries`` a representative sample is linted instead.
- Sharded CRLs (``revocation.crl_shards``): shard k covers the certificates with
  ``crl_shard = k``, its IDP names ``/crl/<ca>/<k>.crl``; the unsharded CRL covers
  those with no shard (issued before sharding) and the revoked subordinate CAs. All
  scopes of a CA share its one number sequence. :func:`publish_scopes` reads the
  revoked rows of every scope in one streamed pass; :func:`republish_due` is the
  timer's entry point.
"""

from __future__ import annotations

import hashlib
import itertools
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy import String, func, select, type_coerce
from sqlalchemy.exc import IntegrityError

from appliance import durations, lint, logs
from appliance.audit.log import Actor
from appliance.ca import authorities as authz
from appliance.ca import crl_points
from appliance.errors import ApplianceError, SignatureCheckError
from appliance.hsm import keys
from appliance.hsm.signer import token_private_key
from appliance.revocation.reasons import FLAGS
from appliance.runtime import Appliance
from appliance.store.models import Authority, Certificate, Crl, HsmKey
from appliance.x509 import algorithms, signing

log = logs.get("revocation.crl")
SAMPLE = 1000
SHARD_SAMPLE = 50
"""The lint of the further shards of one :func:`publish_scopes` run: once one shard of
more than :data:`SAMPLE` entries was linted (in full, or its SAMPLE), every further shard
above SAMPLE entries is linted on a trial with every reason it holds and its first 50
entries. They differ from the first only in their IDP URL, number and entries (same
issuer, extensions and entry code). Why: pkilint takes ~0.5 s for 1,000 entries and
~5 s for 15,000, so 64 shards of 1,000,000 entries cost 30 s of lint with a full sample
each, and 256 shards of 4,000 entries linted in full over 5 minutes; with this, ~2 s."""


class CrlError(ApplianceError):
    code = "crl_error"


@dataclass(frozen=True)
class Published:
    authority: str
    number: int
    entries: int
    this_update: datetime
    next_update: datetime
    sha256: str
    shard: int | None = None


def crl_url(app: Appliance, authority: str, shard: int | None = None) -> str:
    """Where the pipeline points leaf certificates of ``authority`` (their CRL DP): the
    unsharded CRL, or with ``shard`` that shard's (``revocation.crl_shards``)."""
    return crl_points.url(app.settings.config.service.public_base_url, authority, shard)


def _scope_url(app: Appliance, db: Any, ca: Authority, shard: int | None) -> str:
    """The URL the IDP must name: exactly the CRL DP the covered certificates carry. A
    root's are CA certificates made at ceremonies, so their own CRL DP is authoritative."""
    if ca.kind == "root" and shard is None:
        for der in db.scalars(select(Authority.certificate_der).where(
                Authority.parent_id == ca.id).order_by(Authority.id)):
            try:
                points = x509.load_der_x509_certificate(der).extensions.get_extension_for_class(
                    x509.CRLDistributionPoints).value
            except x509.ExtensionNotFound:
                continue
            for point in points:
                for name in point.full_name or []:
                    if isinstance(name, x509.UniformResourceIdentifier):
                        return str(name.value)
    return crl_url(app, ca.name, shard)


@dataclass
class _Entries:
    """The CRL entries and, for the lint, a sample with every reason in it."""

    revoked: list[x509.RevokedCertificate]
    sample: list[x509.RevokedCertificate]
    reasons: list[x509.RevokedCertificate] = field(default_factory=list)  # one per reason

    def small_sample(self, size: int) -> list[x509.RevokedCertificate]:
        return self.reasons + self.revoked[:size]


def _reason_extensions() -> dict[str | None, list[x509.Extension[x509.ExtensionType]]]:
    """One shared, immutable extension list per reason (1,000,000 entries with 8 reasons
    need 8 extension objects, not 1,000,000)."""
    out: dict[str | None, list[x509.Extension[x509.ExtensionType]]] = {
        None: [], "unspecified": []}
    for name, flag in FLAGS.items():
        if name != "unspecified":
            out[name] = [x509.Extension(x509.CRLReason.oid, False, x509.CRLReason(flag))]
    return out


def _naive_utc(value: Any, default: datetime) -> datetime:
    """A database timestamp (SQLite: text, naive UTC or with an offset; PostgreSQL: an
    aware datetime) as the naive UTC datetime the entry builder stores."""
    if isinstance(value, str) and value.endswith("+00:00"):
        value = value[:-6]  # already UTC: skip the conversion below
    when: datetime = default if value is None else (
        value if isinstance(value, datetime) else datetime.fromisoformat(str(value)))
    if when.tzinfo is not None:
        when = when.astimezone(UTC).replace(tzinfo=None)
    return when


ALL = "all"
"""``_entries``' scope for every shard at once (bucketed by ``crl_shard``)."""


class _Bucket:
    """The entries of one CRL scope as they stream in."""

    def __init__(self) -> None:
        self.revoked: list[x509.RevokedCertificate] = []
        self.first_of: dict[str | None, x509.RevokedCertificate] = {}

    def done(self) -> _Entries:
        reasons = list(self.first_of.values())
        return _Entries(self.revoked, reasons + self.revoked[:SAMPLE], reasons)


def _entries(db: Any, ca: Authority, now: datetime, shard: int | str | None = None
             ) -> dict[int | None, _Entries]:
    """The entries of ``ca``'s CRL scope ``shard`` (None: the unsharded CRL, i.e. the
    certificates with no shard and the revoked subordinate CAs; an int: that shard; ALL:
    every scope, bucketed, from ONE streamed query - not one query per shard).

    Why not the ORM and the builder's setters: at 1,000,000 entries the ORM's
    timestamp parsing, three builder copies per entry and an extension object per entry
    were most of the publish time and memory. Rows are streamed (never all held), the
    timestamp is read as text and parsed in C, each entry is built from the
    constructor with its reason's shared extension list, and the checks the setters
    would make (serial positive and under 160 bits, a known reason) are made here."""
    exts = _reason_extensions()
    naive_now = now.astimezone(UTC).replace(tzinfo=None)
    query = (
        select(Certificate.serial_hex, type_coerce(Certificate.revoked_at, String),
               Certificate.revocation_reason, Certificate.crl_shard)
        .where(Certificate.authority_id == ca.id, Certificate.status == "revoked",
               Certificate.not_after > now)
        .order_by(Certificate.id))
    if shard is None:
        query = query.where(Certificate.crl_shard.is_(None))
    elif shard != ALL:
        query = query.where(Certificate.crl_shard == shard)
    rows = db.connection().execute(query)  # Core, not the ORM's row loading
    subs: list[Any] = []
    if shard is None or shard == ALL:
        subs = db.execute(
            select(Authority.serial_hex, Authority.created_at)
            .where(Authority.parent_id == ca.id, Authority.status == "revoked",
                   Authority.not_after > now)
        ).all()
    build = x509.RevokedCertificateBuilder
    buckets: dict[int | None, _Bucket] = {}
    if shard != ALL:
        buckets[shard if isinstance(shard, int) else None] = _Bucket()
    for serial_hex, revoked_at, reason, in_shard in itertools.chain(
            rows, ((s, c, "cessationOfOperation", None) for s, c in subs)):
        serial = int(serial_hex, 16)
        if serial <= 0 or serial.bit_length() >= 160:
            raise CrlError(f"serial {serial_hex} cannot be a CRL entry")
        ext = exts.get(reason)
        if ext is None:
            raise CrlError(f"unknown revocation reason {reason!r} for serial {serial_hex}")
        entry = build(serial, _naive_utc(revoked_at, naive_now), ext).build()
        bucket = buckets.get(in_shard)
        if bucket is None:
            bucket = buckets[in_shard] = _Bucket()
        bucket.revoked.append(entry)
        if reason not in bucket.first_of:
            bucket.first_of[reason] = entry
    return {k: v.done() for k, v in buckets.items()}


def _builder(ca: Authority, cert: x509.Certificate, url: str, number: int, now: datetime,
             next_update: datetime, entries: list[x509.RevokedCertificate]
             ) -> x509.CertificateRevocationListBuilder:
    return (
        x509.CertificateRevocationListBuilder(
            issuer_name=cert.subject, last_update=now, next_update=next_update,
            revoked_certificates=entries)
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            signing.ca_public_key(cert)), critical=False)
        .add_extension(x509.IssuingDistributionPoint(
            full_name=[x509.UniformResourceIdentifier(url)], relative_name=None,
            only_contains_user_certs=ca.kind != "root", only_contains_ca_certs=ca.kind == "root",
            only_some_reasons=None, indirect_crl=False, only_contains_attribute_certs=False),
            critical=True)
    )


Progress = Callable[[str], None]
"""Told each step of a long publication ("issuing: signing 1000000 entries") as it starts."""


def _quiet(_step: str) -> None:
    pass


@dataclass
class _Authority:
    """One CA as a publication needs it: read once, whatever number of shards follows."""

    ca: Authority
    cert: x509.Certificate
    signer: Any
    public: Any
    algo: Any


def _load(app: Appliance, authority: str) -> _Authority:
    with app.db.sessions() as db:
        ca = authz.get(db, authority)
        if ca.key_id is None or ca.kind not in ("root", "intermediate"):
            raise CrlError(f"{authority} is not a CA with a key in this token")
        key_row = db.get(HsmKey, ca.key_id)
        assert key_row is not None
        cert = authz.certificate(ca)
        db.expunge(ca)
    pool = app.signing_pool()
    public = signing.ca_public_key(cert)
    signer = token_private_key(pool, keys.find_key(pool, key_row.label, public))
    return _Authority(ca, cert, signer, public, algorithms.ca_signature_hash(public))


def _check_shard(ca: Authority, shard: int | None) -> None:
    if shard is None:
        return
    if ca.kind == "root":
        raise CrlError(f"{ca.name} is a root: its CRL is not sharded")
    if not 0 <= shard <= crl_points.MAX_SHARD:
        raise CrlError(f"shard {shard} is out of range (0..{crl_points.MAX_SHARD})")


def _next_number(app: Appliance, ca_id: int) -> int:
    with app.db.sessions() as db:
        return int(db.scalar(select(func.max(Crl.number)).where(
            Crl.authority_id == ca_id)) or 0) + 1


def publish(app: Appliance, authority: str, actor: Actor, *, shard: int | None = None,
            progress: Progress = _quiet) -> Published:
    """Build, lint, sign, store and audit a new full CRL of ``authority`` (of one of its
    shards with ``shard``).

    The CRL number is read BEFORE the entries: whoever stores number n+1 read the
    entries after number n was stored, hence after that CRL read its own, so a higher
    number never lists less than a lower one of the same scope. Two publishers that read
    the same number collide on the ``(authority, number)`` constraint; the loser starts
    over (number, entries, signature), a little later."""
    auth = _load(app, authority)
    _check_shard(auth.ca, shard)
    for attempt in range(MAX_ATTEMPTS):
        number = _next_number(app, auth.ca.id)
        now = datetime.now(UTC).replace(microsecond=0)
        progress(f"{_label(authority, shard)}: reading revoked certificates")
        with app.db.sessions() as db:
            found = _entries(db, auth.ca, now, shard)[shard]
            url = _scope_url(app, db, auth.ca, shard)
        done = _sign_and_store(app, auth, actor, shard, url, number, now, found, progress)
        if done is not None:
            return done
        log.info("CRL number taken by another node; retrying",
                 extra={"authority": authority, "shard": shard, "attempt": attempt + 1})
        time.sleep(random.uniform(0.005, 0.05) * (attempt + 1))  # noqa: S311 (a backoff jitter)
    raise CrlError(f"could not allocate a CRL number for {authority} after "
                   f"{MAX_ATTEMPTS} attempts")


MAX_ATTEMPTS = 10


def _label(authority: str, shard: int | None) -> str:
    return authority if shard is None else f"{authority}/{shard}"


def _sign_and_store(app: Appliance, auth: _Authority, actor: Actor, shard: int | None,
                    url: str, number: int, now: datetime, found: _Entries,
                    progress: Progress, sample: int = SAMPLE,
                    full_lint_max: int | None = None) -> Published | None:
    """Sign CRL ``number`` of one scope and store it; None when the number was taken."""
    cfg = app.settings.config.revocation
    if full_lint_max is None:
        full_lint_max = cfg.crl_full_lint_max_entries
    validity = timedelta(seconds=durations.parse(cfg.crl_validity))
    ca, cert, entries = auth.ca, auth.cert, found.revoked
    label = _label(ca.name, shard)
    next_update = min(now + validity, cert.not_valid_after_utc)
    builder = _builder(ca, cert, url, number, now, next_update, entries)
    if len(entries) <= full_lint_max:
        progress(f"{label}: building, linting and signing CRL #{number} "
                 f"({len(entries)} entries)")
        crl = signing.sign_crl(builder, auth.signer, auth.algo, None, auth.public, [],
                               f"CRL of {label}")
    else:
        progress(f"{label}: linting a sample of CRL #{number}")
        _lint_sample(ca, cert, url, number, now, next_update,
                     found.sample if sample >= SAMPLE else found.small_sample(sample),
                     auth.public, auth.algo)
        progress(f"{label}: building and signing CRL #{number} ({len(entries)} entries)")
        crl = builder.sign(auth.signer, auth.algo)
        if not crl.is_signature_valid(auth.public):
            raise SignatureCheckError(f"CRL of {label}: signature does not verify")
    der = crl.public_bytes(serialization.Encoding.DER)
    digest = hashlib.sha256(der).hexdigest()
    progress(f"{label}: storing CRL #{number} ({len(der)} bytes)")
    try:
        with app.db.transaction() as db:
            # Numbers are stored in order, each one only right after number - 1: a
            # publisher whose number another one overtook starts over (see publish).
            if int(db.scalar(select(func.max(Crl.number)).where(
                    Crl.authority_id == ca.id)) or 0) != number - 1:
                return None
            db.add(Crl(authority_id=ca.id, number=number, this_update=now,
                       next_update=next_update, entries=len(entries), der=der,
                       created_at=datetime.now(UTC), shard=shard))
            db.flush()
            app.audit_log().append(db, "crl.signed", actor, object_ids={
                "authority": ca.name, "crl_number": number},
                details={"entries": len(entries), "this_update": now.isoformat(),
                         "next_update": next_update.isoformat(), "sha256": digest,
                         "shard": shard, "url": url})
    except IntegrityError:
        return None
    return Published(ca.name, number, len(entries), now, next_update, digest, shard)


def _lint_sample(ca: Authority, cert: x509.Certificate, url: str, number: int, now: datetime,
                 next_update: datetime, sample: list[x509.RevokedCertificate], public: Any,
                 algo: Any) -> None:
    """Lint a trial CRL with the same extensions and a sample of entries (every reason
    present in the CRL, then the first :data:`SAMPLE`), signed by a throw-away key."""
    trial = _builder(ca, cert, url, number, now, next_update, sample).sign(
        signing.throwaway_key(public), algo)
    lint.require_clean(lint.lint_crl(
        trial.public_bytes(serialization.Encoding.DER)), f"CRL of {ca.name} (sample)")


MAX_IMPORTED_CRL_BYTES = 10_000_000  # Microsoft's advice for a CRL's size; an ARL is tiny


def import_signed(app: Appliance, authority: str, data: bytes, actor: Actor) -> Published:
    """Publish a CRL that ``authority``'s key signed elsewhere (an offline root's ``crl``
    ceremony): checked against the registered CA certificate, never older than what is
    published, then stored and audited like one signed here."""
    if len(data) > MAX_IMPORTED_CRL_BYTES:
        raise CrlError(f"the CRL is larger than {MAX_IMPORTED_CRL_BYTES} bytes")
    try:
        crl = (x509.load_pem_x509_crl(data) if b"-----BEGIN" in data
               else x509.load_der_x509_crl(data))
        number_ext = crl.extensions.get_extension_for_class(x509.CRLNumber).value
        entries = len(crl)
    except x509.ExtensionNotFound:
        raise CrlError("the CRL has no CRL number") from None
    except ValueError as exc:
        raise CrlError(f"not a CRL (PEM or DER): {exc}") from None
    now = datetime.now(UTC)
    with app.db.transaction() as db:
        ca = authz.get(db, authority)
        cert = authz.certificate(ca)
        if crl.issuer.public_bytes() != cert.subject.public_bytes():
            raise CrlError(f"the CRL's issuer {crl.issuer.rfc4514_string()!r} is not "
                           f"{authority} ({cert.subject.rfc4514_string()!r})")
        if not crl.is_signature_valid(signing.ca_public_key(cert)):
            raise CrlError(f"the CRL is not signed by {authority}'s key")
        this_update, next_update = crl.last_update_utc, crl.next_update_utc
        if next_update is None or next_update <= now:
            raise CrlError("the CRL has expired (or has no nextUpdate); sign a new one")
        if this_update > now + timedelta(minutes=5):
            raise CrlError("the CRL's thisUpdate lies in the future")
        newest = db.scalar(select(func.max(Crl.number)).where(Crl.authority_id == ca.id))
        if newest is not None and number_ext.crl_number <= newest:
            raise CrlError(f"CRL #{number_ext.crl_number} is not newer than the published "
                           f"#{newest} of {authority}")
        der = crl.public_bytes(serialization.Encoding.DER)
        digest = hashlib.sha256(der).hexdigest()
        db.add(Crl(authority_id=ca.id, number=number_ext.crl_number, this_update=this_update,
                   next_update=next_update, entries=entries, der=der, created_at=now))
        db.flush()
        app.audit_log().append(db, "crl.imported", actor, object_ids={
            "authority": authority, "crl_number": number_ext.crl_number},
            details={"entries": entries, "this_update": this_update.isoformat(),
                     "next_update": next_update.isoformat(), "sha256": digest})
    return Published(authority, number_ext.crl_number, entries, this_update, next_update,
                     digest)


def scopes(app: Appliance, db: Any, ca: Authority) -> list[int | None]:
    """The CRLs ``ca`` publishes: the unsharded one and, for an issuing CA, shards
    0..N-1 of ``revocation.crl_shards`` plus every shard it ever published (certificates
    issued under a larger N still name theirs)."""
    out: list[int | None] = [None]
    if ca.kind == "root":
        return out
    shards = set(range(app.settings.config.revocation.crl_shards))
    shards.update(k for k in db.scalars(select(Crl.shard).where(
        Crl.authority_id == ca.id, Crl.shard.is_not(None)).distinct()) if k is not None)
    return out + sorted(shards)


def publish_scopes(app: Appliance, authority: str, actor: Actor,
                   wanted: list[int | None] | None = None, *,
                   progress: Progress = _quiet) -> list[Published]:
    """New CRLs for several scopes of ``authority`` (default: all of :func:`scopes`) from
    ONE streamed read of its revoked certificates, bucketed by shard: with 1,000,000
    revoked in 64 shards that is one pass, not 64. The numbers are read first (one block,
    in ``wanted``'s order); a scope whose number another publisher overtook is published
    again on its own (:func:`publish`)."""
    auth = _load(app, authority)
    with app.db.sessions() as db:
        wanted = scopes(app, db, auth.ca) if wanted is None else wanted
    for shard in wanted:
        _check_shard(auth.ca, shard)
    if len(wanted) == 1:
        return [publish(app, authority, actor, shard=wanted[0], progress=progress)]
    first = _next_number(app, auth.ca.id)
    now = datetime.now(UTC).replace(microsecond=0)
    progress(f"{authority}: reading revoked certificates ({len(wanted)} CRLs)")
    with app.db.sessions() as db:
        buckets = _entries(db, auth.ca, now, ALL)
        urls = {shard: _scope_url(app, db, auth.ca, shard) for shard in wanted}
    done: list[Published] = []
    overtaken = False
    sample, full_lint_max = SAMPLE, None
    for i, shard in enumerate(wanted):
        found = buckets.pop(shard, None) or _Entries([], [])  # popped: freed once signed
        result = None if overtaken else _sign_and_store(
            app, auth, actor, shard, urls[shard], first + i, now, found, progress, sample,
            full_lint_max)
        if shard is not None and len(found.revoked) > SAMPLE:
            # One shard of this run was linted with SAMPLE entries or more: the further
            # shards above SAMPLE entries get the small sample (SHARD_SAMPLE).
            sample = SHARD_SAMPLE
            full_lint_max = min(SAMPLE, app.settings.config.revocation.crl_full_lint_max_entries)
        if result is None:
            overtaken = True  # the block is gone: each remaining scope reads afresh
            result = publish(app, authority, actor, shard=shard, progress=progress)
        done.append(result)
    return done


def publish_all(app: Appliance, actor: Actor, *, progress: Progress = _quiet
                ) -> list[Published]:
    """A new CRL for every active CA with a key (roots and intermediates), every shard
    of each issuing CA too."""
    with app.db.sessions() as db:
        names = list(db.scalars(select(Authority.name).where(
            Authority.kind.in_(("root", "intermediate")), Authority.key_id.is_not(None),
            Authority.status == "active").order_by(Authority.id)))
    done: list[Published] = []
    for i, name in enumerate(names, 1):
        def step(text: str, i: int = i) -> None:
            progress(f"[{i}/{len(names)}] {text}")
        done += publish_scopes(app, name, actor, progress=step)
    return done


def _aware(value: Any) -> datetime | None:
    if value is None:
        return None
    when = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when


SETTLE_SECONDS = 10.0
"""A revocation this close before a CRL's thisUpdate may still have been committing when
that CRL read its entries (both times are whole seconds, taken before the commit and the
read): such a CRL stays due until one made later than that covers it."""


def due(app: Appliance, max_age_seconds: float | None = None, *,
        settle_seconds: float = SETTLE_SECONDS) -> dict[str, list[int | None]]:
    """Which CRLs are due, per authority: missing, older than ``max_age_seconds``
    (default ``revocation.crl_republish``), or not surely newer than a revocation in
    their scope (:data:`SETTLE_SECONDS`)."""
    if max_age_seconds is None:
        max_age_seconds = durations.parse(app.settings.config.revocation.crl_republish)
    cutoff = datetime.now(UTC) - timedelta(seconds=max_age_seconds)
    settle = timedelta(seconds=settle_seconds)
    out: dict[str, list[int | None]] = {}
    with app.db.sessions() as db:
        cas = list(db.scalars(select(Authority).where(
            Authority.kind.in_(("root", "intermediate")), Authority.key_id.is_not(None),
            Authority.status == "active").order_by(Authority.id)))
        for ca in cas:
            newest_n = (select(Crl.shard, func.max(Crl.number).label("n"))
                        .where(Crl.authority_id == ca.id).group_by(Crl.shard).subquery())
            newest = {shard: _aware(when) for shard, when in db.execute(
                select(Crl.shard, Crl.this_update).join(
                    newest_n, (Crl.number == newest_n.c.n) & (Crl.authority_id == ca.id)))}
            latest = {shard: _aware(when) for shard, when in db.execute(
                select(Certificate.crl_shard, func.max(Certificate.revoked_at))
                .where(Certificate.authority_id == ca.id, Certificate.status == "revoked")
                .group_by(Certificate.crl_shard))}
            wanted = []
            for shard in scopes(app, db, ca):
                made, revoked = newest.get(shard), latest.get(shard)
                if made is None or made <= cutoff or (
                        revoked is not None and revoked > made - settle):
                    wanted.append(shard)
            if wanted:
                out[ca.name] = wanted
    return out


def republish_due(app: Appliance, actor: Actor, max_age_seconds: float | None = None, *,
                  settle_seconds: float = SETTLE_SECONDS,
                  progress: Progress = _quiet) -> list[Published]:
    """Publish every CRL that is :func:`due` (the node's CRL timer calls this every
    minute or so): a revocation is on its shard's CRL within a tick even when the
    revocation's own republication failed, and every CRL is renewed on schedule."""
    done: list[Published] = []
    for name, wanted in due(app, max_age_seconds, settle_seconds=settle_seconds).items():
        done += publish_scopes(app, name, actor, wanted, progress=progress)
    return done
