"""The FIPS-style power-on and on-demand self-tests, and the error state they gate.

In FIPS mode every process that uses a key runs, before its first token operation
(``Appliance.signing_pool``, which ``serve``, the API workers, key generation and every
signing command go through):

- known-answer tests of every algorithm it runs outside the token: SHA-2, ECDSA and RSA
  verification, HMAC-SHA-256/384/512, AES-256-GCM (:mod:`appliance.hsm.selftest`);
- the SP 800-90B health tests on a fresh draw of token randomness (:mod:`.rng_health`);
- a pairwise sign/verify through the token;
- the software integrity test: the manifest of the installed package must equal the sealed
  one, whose signature by its token key must verify (:mod:`.seal`).

Each run is recorded (a ``SelfTestRun`` row for the node, and ``fips.selftest.passed`` /
``fips.selftest.failed`` in the audit log). A failure puts the process in the error state
(:class:`ErrorState`): every signing, CRL, OCSP and ACME request is answered 503
``fips_error`` until the process is restarted and its power-on tests pass. A running
service also watches the newest run of its node (``appliance fips selftest`` on the same
installation), so a failure found on demand stops it too (``web/health.py``).
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from appliance import logs
from appliance.audit.log import Actor
from appliance.errors import ApplianceError, HsmLoginError, HsmUnavailableError, ServerFault
from appliance.fips import manifest as manifest_mod
from appliance.fips import rng_health
from appliance.fips.host import Host
from appliance.fips.seal import SealError, load_sealed, verify_sealed
from appliance.hsm import keys, rng
from appliance.hsm import selftest as hsm_selftest
from appliance.hsm.pool import SessionPool
from appliance.hsm.selftest import Check
from appliance.store.models import SelfTestRun

log = logs.get("fips")
SYSTEM = Actor("appliance", "system")
# Test-only: also check another copy of the package (one with a changed byte, to show the
# integrity test fail), besides the installed one: it can only add failures.
PACKAGE_DIR_ENV = "APPLIANCE_FIPS_PACKAGE_DIR"
MAX_AUDITED_DIFFERENCES = 50
POWER_ON, ON_DEMAND = "power-on", "on-demand"
# The token cannot be reached or refused the PIN: the tests could not run, which is not a
# wrong answer. Such an error propagates as itself (nothing recorded, no error state): the
# process cannot sign now, and its next attempt runs the tests again.
UNAVAILABLE = (HsmUnavailableError, HsmLoginError)


class FipsError(ServerFault):
    """The FIPS-style error state: a self-test failed, so nothing is signed until a restart
    whose power-on tests pass."""

    code = "fips_error"
    public_detail = True  # names the failed tests only, which /1.0/health shows anyway


@dataclass
class Result:
    checks: list[Check]
    manifest_sha256: str | None = None
    differences: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def failed(self) -> list[str]:
        return [c.name for c in self.checks if not c.ok]

    def summary(self) -> str:
        return "; ".join(f"{c.name}: {c.detail}" for c in self.checks if not c.ok)


class ErrorState:
    """One process's error state: entered once, left only by a new process."""

    def __init__(self, *, watch_rng: bool = True) -> None:
        """``watch_rng``: a failed continuous RNG test of this process counts (FIPS mode)."""
        self.watch_rng = watch_rng
        self._lock = threading.Lock()
        self._failed: tuple[str, ...] = ()
        self._reason = ""

    def enter(self, failed: list[str], reason: str) -> bool:
        """Enter (or stay in) the error state; True when this call entered it."""
        with self._lock:
            if self._failed:
                return False
            self._failed, self._reason = tuple(failed) or ("unknown",), reason
        log.error("FIPS error state entered", extra={"failed": failed, "reason": reason})
        return True

    @property
    def failed(self) -> tuple[str, ...]:
        """The failed tests, empty while not in the error state (the continuous RNG test of
        this process counts)."""
        with self._lock:
            if self._failed:
                return self._failed
        return ("rng-continuous",) if self.watch_rng and rng.continuous_failure() else ()

    @property
    def reason(self) -> str:
        with self._lock:
            reason = self._reason
        return reason or ((self.watch_rng and rng.continuous_failure()) or "")

    def check(self) -> None:
        """Raise FipsError in the error state."""
        failed = self.failed
        if failed:
            raise FipsError(f"FIPS error state (self-tests failed: {', '.join(failed)}); "
                            "nothing is signed until a restart whose self-tests pass")


def package_roots() -> list[Path]:
    """The installed package, and the test-only copy named by the environment. The copy is
    checked IN ADDITION to the installed package, so the variable can only make the test
    stricter: a changed installation never passes because it points at a clean copy."""
    roots = [manifest_mod.package_dir()]
    override = os.environ.get(PACKAGE_DIR_ENV)
    if override and Path(override).resolve() != roots[0]:
        roots.append(Path(override))
    return roots


def integrity(host: Host, *, allow_unsealed: bool = False) -> Result:
    """The software integrity test alone (its manifest hash and differences included)."""
    try:
        computed = [manifest_mod.compute(root) for root in package_roots()]
    except (OSError, ValueError) as exc:
        return Result([Check("software-integrity", False, f"cannot read the package: {exc}")])
    installed = computed[0]
    try:
        with host.db.sessions() as db:
            sealed = load_sealed(db)
        if sealed is None:
            if allow_unsealed:
                return Result([Check("software-integrity", True, "not sealed yet")],
                              installed.sha256)
            return Result([Check("software-integrity", False,
                                 "no sealed manifest: run appliance fips seal")],
                          installed.sha256)
        public_key = keys.find_key(host.pool, sealed.key_label).public_key
        expected = verify_sealed(sealed, public_key)
    except UNAVAILABLE:
        raise
    except (SealError, ApplianceError) as exc:
        return Result([Check("software-integrity", False, str(exc))], installed.sha256)
    differences = list(dict.fromkeys(d for m in computed for d in m.differences(expected)))
    for m in computed:
        if m.sha256 != expected.sha256 and installed.sha256 == expected.sha256:
            installed = m  # the record names the manifest that differs
    ok = not differences
    detail = "" if ok else (f"{len(differences)} difference(s) from the sealed manifest, "
                            f"first: {differences[0]}")
    return Result([Check("software-integrity", ok, detail)], installed.sha256, differences)


def rng_checks(pool: SessionPool) -> list[Check]:
    try:
        return rng_health.health(rng.random_bytes(pool, rng_health.SAMPLE_BYTES))
    except UNAVAILABLE:
        raise
    except ApplianceError as exc:  # the continuous test refused a repeated draw
        return [Check("rng-health", False, str(exc))]


def run(host: Host, pool: SessionPool, *, allow_unsealed: bool = False) -> Result:
    """Every test, none skipped because another failed (the record names them all)."""
    checks = hsm_selftest.fips_software_checks()
    try:
        checks += hsm_selftest.token_checks(pool)
    except UNAVAILABLE:
        raise
    except Exception as exc:  # a wrong answer of the token is a failed test
        checks.append(Check("token-sign-verify", False, f"{type(exc).__name__}: {exc}"))
    checks += rng_checks(pool)
    found = integrity(host, allow_unsealed=allow_unsealed)
    return Result(checks + found.checks, found.manifest_sha256, found.differences)


def record(host: Host, result: Result, trigger: str) -> None:
    """The node's SelfTestRun row and its audit event, in one transaction."""
    results = [asdict(c) for c in result.checks]
    with host.db.transaction() as session:
        session.add(SelfTestRun(
            node_id=host.node_id, trigger=trigger, passed=result.passed,
            results_json=json.dumps(results), manifest_sha256=result.manifest_sha256,
            ran_at=datetime.now(UTC)))
        details: dict[str, Any] = {
            "trigger": trigger, "pid": os.getpid(),
            "tests": {c.name: "pass" if c.ok else f"fail: {c.detail}" for c in result.checks},
            "manifest_sha256": result.manifest_sha256}
        if result.differences:
            details["differences"] = result.differences[:MAX_AUDITED_DIFFERENCES]
            details["differences_total"] = len(result.differences)
        host.audit_log().append(
            session, "fips.selftest.passed" if result.passed else "fips.selftest.failed",
            SYSTEM, outcome="success" if result.passed else "failure",
            object_ids={"node": host.node_id}, details=details)


def power_on(host: Host, pool: SessionPool, state: ErrorState, *,
             allow_unsealed: bool = False) -> Result:
    """The power-on tests of this process, recorded; a failed test enters the error state
    and raises FipsError. A passing run that cannot be recorded (database down) does not
    count: its error propagates and the next attempt runs the tests again."""
    state.check()
    result = run(host, pool, allow_unsealed=allow_unsealed)
    try:
        record(host, result, POWER_ON)
    except Exception as exc:
        if result.passed:
            raise
        log.error("recording failed power-on self-tests failed", extra={"fault": repr(exc)})
    if not result.passed:
        state.enter(result.failed, result.summary())
        raise FipsError(f"FIPS power-on self-tests failed: {result.summary()}")
    return result


def on_demand(host: Host) -> Result:
    """``appliance fips selftest``: the same tests, recorded for this node (a running
    service of the node reads the record and enters its error state on a failure)."""
    result = run(host, host.pool)
    record(host, result, ON_DEMAND)
    return result


def newest_failure(db: Session, node_id: str) -> tuple[int, str, list[str]] | None:
    """(run id, trigger, failed tests) when the newest self-test run of ``node_id`` failed."""
    row = db.scalars(select(SelfTestRun).where(SelfTestRun.node_id == node_id)
                     .order_by(SelfTestRun.id.desc()).limit(1)).first()
    if row is None or row.passed:
        return None
    try:
        failed = [str(r["name"]) for r in json.loads(row.results_json) if not r.get("ok")]
    except (ValueError, TypeError, KeyError, AttributeError):
        failed = ["unreadable record"]
    return row.id, row.trigger, failed or ["unknown"]


class NodeWatch:
    """The error state for a process without a health thread (the plain-HTTP listener of
    OCSP and CRLs): the node's newest self-test run, read on the request path at most once
    every ``interval`` seconds by one thread at a time; a failed run latches the error
    state (audited once per process). A database that cannot be read is not a self-test
    failure: the last answer stands."""

    def __init__(self, host: Host, state: ErrorState, interval: float = 2.0) -> None:
        self.host = host
        self.state = state
        self.interval = interval
        self._checked = -interval
        self._lock = threading.Lock()

    def failed(self) -> tuple[str, ...]:
        failed = self.state.failed
        now = time.monotonic()
        if failed or now - self._checked < self.interval or not self._lock.acquire(False):
            return failed
        try:
            self._checked = now
            self._read()
        except Exception as exc:
            log.warning("reading the node's self-test runs failed",
                        extra={"fault": type(exc).__name__})
        finally:
            self._lock.release()
        return self.state.failed

    def _read(self) -> None:
        with self.host.db.sessions() as db:
            found = newest_failure(db, self.host.node_id)
        if found is None:
            return
        run_id, trigger, failed = found
        if self.state.enter(failed, f"{trigger} self-test run {run_id} failed"):
            with self.host.db.transaction() as session:
                self.host.audit_log().append(
                    session, "fips.error_state.entered", SYSTEM, outcome="failure",
                    object_ids={"node": self.host.node_id},
                    details={"run": run_id, "trigger": trigger, "failed": failed,
                             "pid": os.getpid(), "listener": "public"})
