"""Readiness of one API worker, kept by background threads: the token and the database.

Why background threads: ``/1.0/ready`` must answer within milliseconds while the token is
gone or the database locked, so it only reads state that two daemon threads keep: the
token watcher (:mod:`appliance.hsm.watch`) and a database probe here (a read on a
connection of its own, with a short timeout, every couple of seconds). A check whose
thread has not reported for a while counts as unavailable ("no answer"), so a hung probe
cannot leave a stale "ok".

The token's transitions are audited from the database thread, in order, once each; one
that cannot be written yet (database down too) stays queued and is written when it can.
An audit record written while the token is away commits without a checkpoint: the pool
refuses token operations at once then, and a checkpoint is best effort.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import text

from appliance import logs
from appliance.audit.log import Actor
from appliance.hsm import rng
from appliance.hsm.watch import TokenWatcher, Transition
from appliance.metrics import ProcessMetrics
from appliance.store.db import make_engine

if TYPE_CHECKING:
    from appliance.runtime import Appliance

log = logs.get("health")
DB_PROBE_INTERVAL = 2.0
DB_PROBE_TIMEOUT = 1.0
MAX_QUEUED_AUDIT = 1000
SYSTEM = Actor("appliance", "system")
AUDIT_EVENTS = {"lost": ("hsm.token.lost", "failure"),
                "recovered": ("hsm.token.recovered", "success"),
                "pin_refused": ("hsm.token.pin_refused", "failure")}


@dataclass(frozen=True)
class Readiness:
    ready: bool
    checks: dict[str, str]
    retry_after: int


def metrics_dir(appliance: Appliance) -> Path:
    """Where workers keep their metrics files: the runtime or state directory under
    systemd (the configuration folder is read-only there), else the data directory."""
    for var, sub in (("RUNTIME_DIRECTORY", "metrics"), ("STATE_DIRECTORY", "run/metrics")):
        value = os.environ.get(var)
        if value:
            return Path(value.split(":")[0]) / sub
    return appliance.settings.base_dir / "run" / "metrics"


class ServiceHealth:
    """The token watcher, the database probe, their metrics and the audit of transitions,
    for one worker process."""

    @classmethod
    def start_for(cls, appliance: Appliance) -> ServiceHealth:
        """Started once per (worker) process, stopped by ``appliance.close`` before the pool
        and the database it watches are closed."""
        health = cls(appliance)
        health.start()
        appliance.on_close(health.stop)
        return health

    def __init__(self, appliance: Appliance) -> None:
        self.app = appliance
        cfg = appliance.settings.config.hsm
        self.probe_interval = cfg.probe_interval_seconds
        try:
            self.metrics: ProcessMetrics | None = ProcessMetrics(metrics_dir(appliance))
        except OSError as exc:
            log.warning("metrics are off: cannot use the metrics folder",
                        extra={"fault": exc.strerror})
            self.metrics = None
        self._set_metric("appliance_token_available", 0)
        self._set_metric("appliance_database_available", 0)
        self._audit: deque[Transition] = deque(maxlen=MAX_QUEUED_AUDIT)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._db_ok: bool | None = None
        self._db_detail = "not checked yet"
        self._db_checked = time.monotonic()
        self._engine: Any = None
        self.watcher = TokenWatcher(
            appliance.pool, probe_interval=cfg.probe_interval_seconds,
            backoff_initial=cfg.recovery_backoff_initial_seconds,
            backoff_max=cfg.recovery_backoff_max_seconds, on_transition=self._transition,
            on_state=self._token_state)
        self._thread = threading.Thread(target=self._db_loop, name="db-probe", daemon=True)
        self.fips = appliance.settings.config.fips.enabled
        self._fips_audit: dict[str, Any] | None = None  # the error state's event, to write

    def start(self) -> None:
        self.watcher.start()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self.watcher.stop()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(DB_PROBE_TIMEOUT + 1)
        if self._engine is not None:
            self._engine.dispose()

    # -- readiness --------------------------------------------------------------------------

    def readiness(self) -> Readiness:
        """From the threads' last reports only: never waits on the token or the database."""
        now = time.monotonic()
        stale = max(3 * self.probe_interval, 5.0)
        token = self.watcher.snapshot()
        if token.state == "up" and now - token.checked_at <= stale:
            hsm_check = "ok"
        elif token.state == "up":
            hsm_check = f"unavailable: no answer from the token for {now - token.checked_at:.0f}s"
        elif token.state == "starting":
            hsm_check = "unavailable: not checked yet"
        elif token.state == "pin refused":
            hsm_check = ("pin refused: not retried; fix the PIN source and restart "
                         f"(since {_clock(token.since)})")
        else:
            hsm_check = f"unavailable: {token.reason} (since {_clock(token.since)})"
        with self._lock:
            db_ok, db_detail, db_checked = self._db_ok, self._db_detail, self._db_checked
        db_stale = max(3 * DB_PROBE_INTERVAL, DB_PROBE_TIMEOUT + DB_PROBE_INTERVAL + 1)
        if db_ok and now - db_checked <= db_stale:
            db_check = "ok"
        elif db_ok:
            db_check = f"unavailable: no answer from the database for {now - db_checked:.0f}s"
        else:
            db_check = f"unavailable: {db_detail}"
        checks = {"token": hsm_check, "database": db_check}
        if self.fips:
            failed = self.app.fips_state.failed
            checks["fips"] = f"fips_error: self-tests failed: {', '.join(failed)}" \
                if failed else "ok"
        retry = math.ceil(max(self.probe_interval, DB_PROBE_INTERVAL))
        return Readiness(all(v == "ok" for v in checks.values()), checks, retry)

    # -- the token's transitions (called by the watcher, under its lock) ------------------

    def _transition(self, t: Transition) -> None:
        counter = {"lost": "appliance_token_losses_total",
                   "recovered": "appliance_token_recoveries_total",
                   "pin_refused": "appliance_token_pin_refusals_total"}[t.kind]
        if self.metrics is not None:
            self.metrics.inc(counter)
        if t.kind == "recovered":
            self.app.audit_key_reachable_again()
        self._audit.append(t)
        self._wake.set()

    def _token_state(self, state: str) -> None:
        self._set_metric("appliance_token_available", 1 if state == "up" else 0)

    def _set_metric(self, name: str, value: float) -> None:
        if self.metrics is not None:
            self.metrics.set(name, value)

    # -- the database thread ----------------------------------------------------------------

    def _db_loop(self) -> None:
        while not self._stop.is_set():
            self._probe_db()
            self._write_audit()
            self._wake.wait(DB_PROBE_INTERVAL)
            self._wake.clear()

    def _probe_db(self) -> None:
        try:
            if self._engine is None:
                self._engine = make_engine(self.app.settings.database_url,
                                           DB_PROBE_TIMEOUT, pool_size=1)
            with self._engine.connect() as conn, conn.begin():
                if conn.dialect.name == "postgresql":
                    conn.execute(text(f"SET LOCAL statement_timeout = "
                                      f"{int(DB_PROBE_TIMEOUT * 1000)}"))
                conn.execute(text("SELECT seq FROM audit_heads LIMIT 1")).first()
                if self.fips:
                    self._probe_selftests(conn)
        except Exception as exc:  # any failure is "unavailable", never a dead thread
            detail = getattr(exc, "orig", None) or exc
            # readiness names the kind of fault only (anyone may ask); the log has it all
            self._db_state(False, type(detail).__name__, str(detail)[:300])
        else:
            self._db_state(True, "", "")

    def _probe_selftests(self, conn: Any) -> None:
        """FIPS mode: the newest self-test run of this node (``appliance fips selftest``, a
        power-on of another process); a failed one puts this worker in the error state. A
        failed continuous RNG test of this worker is latched and audited here too."""
        stuck = rng.continuous_failure()
        if stuck and self.app.fips_state.enter(["rng-continuous"], stuck):
            self._fips_audit = {"trigger": "continuous", "failed": ["rng-continuous"],
                                "reason": stuck, "pid": os.getpid()}
        row = conn.execute(text(
            "SELECT id, trigger, passed, results_json FROM selftest_runs WHERE node_id = :n "
            "ORDER BY id DESC LIMIT 1"), {"n": self.app.node_id}).first()
        if row is None or row.passed:
            return
        try:
            failed = [r["name"] for r in json.loads(row.results_json) if not r.get("ok")]
        except (ValueError, TypeError, KeyError):
            failed = ["unreadable record"]
        if self.app.fips_state.enter(failed, f"{row.trigger} self-test run {row.id} failed"):
            self._fips_audit = {"run": row.id, "trigger": row.trigger, "failed": failed,
                                "pid": os.getpid()}

    def _db_state(self, ok: bool, kind: str, detail: str) -> None:
        with self._lock:
            changed = ok != self._db_ok
            self._db_ok, self._db_detail, self._db_checked = ok, kind, time.monotonic()
        if changed:
            self._set_metric("appliance_database_available", 1 if ok else 0)
            if not ok:
                log.warning("database probe failed", extra={"fault": f"{kind}: {detail}"})

    def _write_audit(self) -> None:
        """Queued transitions, oldest first; one that fails stays for the next round."""
        if self._fips_audit is not None:
            try:
                with self.app.db.transaction() as session:
                    self.app.audit_log().append(
                        session, "fips.error_state.entered", SYSTEM, outcome="failure",
                        object_ids={"node": self.app.node_id}, details=self._fips_audit)
                self._fips_audit = None
            except Exception as exc:  # the database may be down: again next round
                log.warning("auditing the FIPS error state failed; will retry",
                            extra={"fault": type(exc).__name__})
        while self._audit and not self._stop.is_set():
            t = self._audit[0]
            event_type, outcome = AUDIT_EVENTS[t.kind]
            details: dict[str, Any] = {"fault": t.fault, "pid": os.getpid(),
                                       "at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                           time.gmtime(t.at))}
            if t.outage_seconds is not None:
                details["outage_seconds"] = t.outage_seconds
            profile = self.app.hsm_profile
            try:
                with self.app.db.transaction() as session:
                    self.app.audit_log().append(
                        session, event_type, SYSTEM, outcome=outcome,
                        object_ids={"token": profile.token.label or profile.token.serial,
                                    "node": self.app.node_id},
                        details=details)
            except Exception as exc:  # the database may be down too: keep it for later
                log.warning("auditing a token transition failed; will retry",
                            extra={"fault": type(exc).__name__, "event": event_type})
                return
            self._audit.popleft()


def _clock(wall: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(wall))
