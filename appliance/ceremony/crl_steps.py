"""The ceremony's CRL step: a CA's CRL signed in the token, e.g. the offline root's.

It can also revoke authorities this CA issued (``revoke_authorities``): their entries
go on the CRL and their status changes in the same transaction that stores it.
"""

from __future__ import annotations

import hashlib
from datetime import timedelta

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy import func, select

from appliance.ca import authorities as authz
from appliance.ceremony import schema as s
from appliance.ceremony import x509build as xb
from appliance.ceremony.context import StepContext, StepResult, utc_now
from appliance.rfc3339 import format_z
from appliance.store.models import Crl
from appliance.x509 import algorithms, signing


def crl(ctx: StepContext, step: s.CrlStep) -> StepResult:
    issuer = ctx.resolve_ca(step.issuer)
    signing_key = ctx.signing_key(issuer)
    now = utc_now()
    with ctx.app.db.transaction() as db:
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
    signed = signing.sign_crl(builder, signing_key, algo,
                              algorithms.rsa_padding(issuer.public_key, step.rsa_padding, algo),
                              issuer.public_key, step.skip_lints, f"CRL {step.id}")
    der = signed.public_bytes(serialization.Encoding.DER)
    with ctx.app.db.transaction() as db:
        issuer_row = authz.get(db, issuer.name)
        db.add(Crl(authority_id=issuer_row.id, number=number, this_update=now,
                   next_update=now + _days(step.next_update_days), entries=len(entries),
                   der=der, created_at=now))
        for name in step.revoke_authorities:
            authz.get(db, name).status = "revoked"
        ctx.app.audit_log().append(db, "crl.signed", ctx.actor, object_ids={
            "ceremony": ctx.ceremony_ref, "step": step.id, "authority": issuer.name,
            "crl_number": number},
            details={"entries": len(entries), "revoked_authorities": step.revoke_authorities,
                     "next_update": format_z(now + _days(step.next_update_days)),
                     "sha256": hashlib.sha256(der).hexdigest()})
    ctx.write(f"{step.id}.crl", der)
    return StepResult(step.id, step.type, record={"crl": {
        "issuer": issuer.name, "number": number, "entries": len(entries),
        "sha256": hashlib.sha256(der).hexdigest()}})


def _days(n: int) -> timedelta:
    return timedelta(days=n)
