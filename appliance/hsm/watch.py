"""A per-process watcher that notices a lost token and brings it back in the background.

Why a watcher: a token that goes away (an HSM restarted, a network HSM cut off, SoftHSM's
files moved) must not make every request try to reconnect and wait; and when it comes
back, signing must resume by itself within seconds, not at the next lucky request. So:

* one daemon thread per process probes the token cheaply (slot list and token info, no
  session, no lock a signer waits on) every ``probe_interval_seconds``; the pool also
  reports what requests ran into (:meth:`TokenWatcher.suspect`), checked by the same probe
  at once, so a fault that is real turns the state down within milliseconds;
* while down, every request is refused at once (:meth:`TokenWatcher.refusal`, a 503
  ``hsm_unavailable``) and the thread re-initialises the module and logs in again with
  backoff (``recovery_backoff_*``: 0.25 s doubling to 2 s by default, so signing resumes
  within about 2 s of the token's return);
* a refused PIN is never retried (a token locks a PIN after a few wrong tries): the state
  becomes "pin refused" until the operator restarts the service;
* every transition is reported once to ``on_transition`` (audit and metrics live there),
  every change of state to ``on_state`` (the availability gauge).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from appliance import logs
from appliance.errors import ApplianceError, HsmError, HsmLoginError, HsmUnavailableError
from appliance.hsm.keys import KeyGoneError
from appliance.hsm.pool import SessionPool

log = logs.get("hsm.watch")
State = Literal["starting", "up", "down", "pin refused"]
Kind = Literal["lost", "recovered", "pin_refused"]
STATES: tuple[State, ...] = ("starting", "up", "down", "pin refused")
RECHECK_SECONDS = 0.1


@dataclass(frozen=True)
class Transition:
    """One change of the token's state in this process, as audited and counted."""

    kind: Kind
    fault: str
    at: float  # wall clock
    outage_seconds: float | None = None  # recovered: how long the token was down here


@dataclass(frozen=True)
class Snapshot:
    state: State
    fault: str  # in full, for the audit record and the log
    reason: str  # its kind only (short_reason), for readiness
    since: float  # wall clock of the last transition
    checked_at: float  # monotonic time of the last probe that finished


class Backoff:
    """Delays between recovery attempts: ``initial``, doubling, at most ``cap``."""

    def __init__(self, initial: float, cap: float) -> None:
        self.initial, self.cap = initial, max(cap, initial)
        self._next = initial

    def next(self) -> float:
        delay = self._next
        self._next = min(delay * 2, self.cap)
        return delay

    def reset(self) -> None:
        self._next = self.initial


def short_reason(exc: BaseException) -> str:
    """What readiness (which anyone may ask) says of a fault: its kind, never a path, a
    label or a module name (those are in the audit record and the log)."""
    if isinstance(exc, HsmLoginError):
        return "the token refused the PIN"
    cause = exc.__cause__
    if cause is not None and not isinstance(cause, ApplianceError):
        return type(cause).__name__
    return exc.code if isinstance(exc, ApplianceError) else type(exc).__name__


def fault_name(exc: BaseException) -> str:
    """A short, PIN-free description: the error's text when ours, the PKCS#11 fault's name
    when it came from python-pkcs11."""
    cause = exc.__cause__
    text = str(exc) if isinstance(exc, ApplianceError) else type(exc).__name__
    if cause is not None and not isinstance(cause, ApplianceError):
        text = f"{text} ({type(cause).__name__})"
    return text[:300]


class TokenWatcher:
    """The token's state in this process, kept by one background thread."""

    def __init__(self, pool: SessionPool, *, probe_interval: float, backoff_initial: float,
                 backoff_max: float, on_transition: Callable[[Transition], None],
                 on_state: Callable[[State], None] | None = None) -> None:
        self.pool = pool
        self.probe_interval = probe_interval
        self._backoff = Backoff(backoff_initial, backoff_max)
        self._on_transition = on_transition
        self._on_state = on_state
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._state: State = "starting"
        self._fault = self._reason = "not checked yet"
        self._since = time.time()
        self._down_at = time.monotonic()
        self._checked_at = time.monotonic()
        self._refresh_wanted = False
        self._refreshed_at = -1e9
        self._pin_error: HsmLoginError | None = None
        self._thread: threading.Thread | None = None

    # -- what the pool and readiness ask ----------------------------------------------

    def snapshot(self) -> Snapshot:
        with self._lock:
            return Snapshot(self._state, self._fault, self._reason, self._since,
                            self._checked_at)

    def refusal(self) -> HsmError | None:
        """The error a token operation gets at once while the token is known to be away;
        None while it is up (or not checked yet: the operation then finds out itself)."""
        with self._lock:
            if self._state == "pin refused" and self._pin_error is not None:
                return self._pin_error
            if self._state != "down":
                return None
            err = HsmUnavailableError(
                f"token unavailable since {_clock(self._since)} ({self._fault}); reconnecting "
                "in the background")
        err.token_gone = False  # nothing in the request path re-initialises the module
        return err

    def suspect(self, fault: Exception) -> bool:
        """A token operation ended in ``fault``: check the token now (cheaply, in the
        caller's thread); whether it is now known to be away (or the PIN refused)."""
        if isinstance(fault, HsmLoginError):
            self._pin_refused(fault)
            return True
        if self.snapshot().state in ("down", "pin refused"):
            return True
        try:
            self.pool.probe()
        except HsmLoginError as exc:
            self._pin_refused(exc)
            return True
        except ApplianceError as exc:
            self._lost(f"{fault_name(fault)}; probe: {fault_name(exc)}", exc)
            return True
        if isinstance(fault, HsmUnavailableError) and fault.token_gone:
            # Device faults on every retry while the token is still listed: the module's
            # view of it is broken; re-initialising (in the background) is the cure.
            self._lost(fault_name(fault), fault)
            return True
        if isinstance(fault, KeyGoneError):
            # A key we found before is not there though the token is: maybe a token that
            # went and came back unseen. Refresh the module's view in the background (at
            # most every reconnect_interval_seconds); not an outage.
            with self._lock:
                self._refresh_wanted = True
            self._wake.set()
        return False

    # -- the thread ---------------------------------------------------------------------

    def start(self) -> None:
        """Start the thread (once, in the process that will use the pool)."""
        if self._thread is not None:
            return
        self.pool.watcher = self
        self._thread = threading.Thread(target=self._run, name="token-watch", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        self._wake.set()
        if self.pool.watcher is self:
            self.pool.watcher = None
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _run(self) -> None:
        self._connect_first()
        while not self._stop.is_set():
            try:
                self._step()
            except Exception:  # a bug here must not end the watch (nor leave "up" standing)
                log.exception("token watcher step failed")
                self._sleep(self._backoff.cap)

    def _step(self) -> None:
        state = self.snapshot().state
        if state == "up":
            self._sleep(self.probe_interval)
            self._check()
        elif state == "down":
            self._recover()
            if self.snapshot().state == "down":
                self._sleep(self._backoff.next())
        else:  # pin refused: nothing is tried until a restart
            self._sleep(3600)

    def _sleep(self, seconds: float) -> None:
        self._wake.wait(seconds)
        self._wake.clear()

    def _connect_first(self) -> None:
        try:
            self.pool.connect()
        except HsmLoginError as exc:
            self._pin_refused(exc)
        except Exception as exc:  # not only ours: whatever it is, the token is not usable
            self._lost(fault_name(exc), exc)
        else:
            self._set("up", "", None, unless=("down", "pin refused"))

    def _check(self) -> None:
        if self._stop.is_set():
            return
        with self._lock:
            refresh = self._refresh_wanted and (
                time.monotonic() - self._refreshed_at
                >= self.pool.profile.reconnect_interval_seconds)
            if refresh:
                self._refresh_wanted = False
                self._refreshed_at = time.monotonic()
        try:
            if refresh:
                log.warning("a known key was not found; re-initialising the PKCS#11 module")
                self.pool.reconnect()
            else:
                self._probe_twice()
        except HsmLoginError as exc:
            self._pin_refused(exc)
        except ApplianceError as exc:
            self._lost(fault_name(exc), exc)
        else:
            with self._lock:
                self._checked_at = time.monotonic()

    def _probe_twice(self) -> None:
        """A failed probe is tried once more a moment later before it counts: a token
        read while another process writes its files must not pass for a lost one."""
        try:
            self.pool.probe()
        except HsmLoginError:
            raise
        except ApplianceError:
            self._stop.wait(RECHECK_SECONDS)
            self.pool.probe()

    def _recover(self) -> None:
        self._wake.clear()  # this attempt answers any wake-up so far
        try:
            self.pool.reconnect()
        except HsmLoginError as exc:
            self._pin_refused(exc)
        except ApplianceError as exc:
            with self._lock:
                self._checked_at = time.monotonic()
            log.info("token still unavailable", extra={"fault": fault_name(exc)})
        else:
            with self._lock:
                outage = time.monotonic() - self._down_at
            self._backoff.reset()
            self._set("up", "", Transition("recovered", self.snapshot().fault, time.time(),
                                           round(outage, 3)), unless=("pin refused",))

    # -- transitions ----------------------------------------------------------------------

    def _lost(self, fault: str, cause: BaseException) -> None:
        if self._set("down", fault, Transition("lost", fault, time.time()),
                     unless=("down", "pin refused"), reason=short_reason(cause)):
            self._backoff.reset()
            self._wake.set()  # start recovering now, not after the probe interval

    def _pin_refused(self, exc: HsmLoginError) -> None:
        with self._lock:
            self._pin_error = exc
        self._set("pin refused", fault_name(exc),
                  Transition("pin_refused", fault_name(exc), time.time()),
                  unless=("pin refused",), reason=short_reason(exc))

    def _set(self, state: State, fault: str, transition: Transition | None,
             unless: tuple[State, ...] = (), reason: str = "") -> bool:
        """Move to ``state`` unless in one of ``unless`` (checked and moved under one lock,
        so two threads seeing the same fault make one transition); whether it moved."""
        with self._lock:
            if self._state in unless:
                return False
            changed = self._state != state
            self._state, self._fault, self._reason = state, fault, reason
            self._since, self._checked_at = time.time(), time.monotonic()
            if changed and self._on_state is not None:
                self._on_state(state)
            if state == "down":
                self._down_at = time.monotonic()
            # Reported under the lock: transitions reach the listener in the order they
            # happened, each once. The listener only records (it never calls back here).
            if transition is not None:
                log.warning(f"token {transition.kind.replace('_', ' ')}",
                            extra={"fault": transition.fault,
                                   "outage_seconds": transition.outage_seconds})
                try:
                    self._on_transition(transition)
                except Exception:
                    log.exception("recording a token transition failed")
            return True


def _clock(wall: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(wall))
