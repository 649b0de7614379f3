"""Executing a ceremony script, step by step, with audit events and a signed transcript.

The runner owns the order of things: the record folder, the quorum before a step
that needs one, each step's handler (by kind: :mod:`.ca_steps` for the keys and
certificates this token signs, :mod:`.import_steps` for a CSR going out and a
certificate coming back, :mod:`.crl_steps` for CRLs), and the audit events around
the whole run. A failure stops the ceremony, is audited, and still leaves a signed
transcript saying how far it got.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from appliance.audit.log import Actor
from appliance.ceremony import ca_steps, crl_steps, import_steps
from appliance.ceremony import transcript as tx
from appliance.ceremony import x509build as xb
from appliance.ceremony.context import StepContext, StepResult, utc_now
from appliance.ceremony.script import LoadedScript
from appliance.fips import quorum as quorum_mod
from appliance.hsm.module import token_text
from appliance.rfc3339 import format_z
from appliance.runtime import Appliance

Echo = Callable[[str], None]
Handler = Callable[[StepContext, Any], StepResult]

#: The handler of each step type (the ``type`` values of :mod:`.schema`).
HANDLERS: dict[str, Handler] = {
    "key": ca_steps.key, "root": ca_steps.root, "intermediate": ca_steps.intermediate,
    "cross-certificate": ca_steps.cross, "ocsp-signer": ca_steps.ocsp_signer,
    "sign-csr": ca_steps.sign_csr, "csr": import_steps.csr, "import": import_steps.import_ca,
    "crl": crl_steps.crl,
}


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
        self.ctx = StepContext(app, script, out_dir, actor)

    # -- the whole ceremony ----------------------------------------------------

    def run(self) -> Path:
        make_record_dir(self.out_dir)
        self.ctx.write("script.yaml", self.script.raw)
        pool = self.app.signing_pool()
        token = pool.token
        self.token = {"label": str(token.label), "serial": token_text(token.serial),
                      "manufacturer": str(token.manufacturer_id), "model": str(token.model)}
        signer = self.app.checkpoint_signer()  # the transcript key must exist before we start
        audit = self.app.audit_log(signing=True)
        started = utc_now()
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
                t0 = utc_now()
                officers = self._quorum(step)
                result = HANDLERS[step.type](self.ctx, step)
                result.record.update({"id": step.id, "type": step.type, "started": format_z(t0),
                                      "finished": format_z(utc_now()), "token": self.token})
                if officers:
                    result.record["quorum"] = {"required": step.quorum.required,  # type: ignore[union-attr]
                                               "officers": officers}
                self.ctx.results[step.id] = result
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
                             "outputs": dict(sorted(self.ctx.outputs.items()))}).seq
            records = [r.record for r in self.ctx.results.values()]
            doc = tx.build(self.script, self.c, self.token, records, self.ctx.outputs,
                           self.app.node_id, first, last, started, utc_now(), status, error,
                           failed_step)
            signed = tx.sign(doc, signer)
            raw = tx.dumps(signed)
            self.ctx.write("transcript.json", raw, track=False)
            with self.app.db.transaction() as db:
                audit.append(db, "ceremony.transcript.signed", self.actor,
                             object_ids={"ceremony": self.c.name, "record": self.out_dir.name},
                             details={"transcript_sha256": hashlib.sha256(raw).hexdigest(),
                                      "key_label": signer.label})
        return self.out_dir / "transcript.json"

    # -- quorum --------------------------------------------------------------

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
            self.ctx.audit_refusal(step, "ceremony.quorum.refused", str(exc),
                                   officers=[n for n, _ in presented])
            raise
        finally:
            presented.clear()
        with self.app.db.transaction() as db:
            self.app.audit_log().append(db, "ceremony.quorum.met", self.actor, object_ids={
                "ceremony": self.ctx.ceremony_ref, "step": step.id},
                details={"required": step.quorum.required, "officers": names})
        return names


def make_record_dir(path: Path) -> None:
    """Create the ceremony record folder; an existing non-empty one is refused."""
    if path.exists():
        if not path.is_dir() or any(path.iterdir()):
            raise xb.CeremonyError(f"{path} already exists and is not empty; outputs are never "
                                   "overwritten")
    else:
        path.mkdir(parents=True, mode=0o750)


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
