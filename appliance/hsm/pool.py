"""A pool of PKCS#11 sessions, safe for threads and for forked worker processes.

Why a pool: one PKCS#11 session must not be used by two threads at once, and
opening a session per operation costs more than the signature. Each caller
borrows a whole session and gives it back.

Why these rules:

* The module is loaded (for multi-threaded use, see :mod:`appliance.hsm.module`)
  and sessions are opened in the process that uses them. A process forked
  after the parent loaded the module re-initialises it and starts with no
  sessions.
* Login state belongs to the application, not to one session. Every session is
  opened without a PIN and the pool logs in once, with ``C_Login`` on the first
  one; closing a session therefore never calls ``C_Logout`` (which would log out
  every session), and the login ends when the last session closes.
* Sessions are opened one at a time, and a refused PIN stops the pool for good:
  a wrong PIN must not be retried into a token lockout.
* Borrowing is cheap: an idle session is popped from a deque (atomic under the
  GIL) with no lock taken; locks are only for opening sessions and for waiting
  when every session is busy. The benchmark in ``bench/hsm_sign.py`` holds the
  pool to within 10% of raw python-pkcs11.
* A session the token has invalidated, or a token that reports a device error,
  is replaced and the operation retried a bounded number of times; after that
  the caller gets :class:`HsmUnavailableError`.
* A token that went away and came back (an HSM restarted, a network HSM reconnected,
  SoftHSM's token files moved away and back) is not seen again by a module until it is
  re-initialised: SoftHSM, for one, marks such a token invalid for good. So when no
  session can be opened or a key the caller knows is not found, the module is
  re-initialised (at most every ``reconnect_interval_seconds``, once no thread is inside
  it) and the operation tried once more: the service comes back by itself.
* In the service a :class:`~appliance.hsm.watch.TokenWatcher` is attached instead: faults
  are reported to it, it decides whether the token is away, and while it is every
  operation is refused at once and the module is re-initialised by the watcher's thread,
  never by a request.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from pkcs11 import exceptions as p11e

from appliance import deadline as request_deadline
from appliance import logs
from appliance.errors import HsmError, HsmLoginError, HsmUnavailableError, KeyNotFoundError
from appliance.hsm.module import (
    CKR_OK,
    CKR_USER_ALREADY_LOGGED_IN,
    LOGIN_REFUSALS,
    find_token,
    load_module,
    startup_lock,
)
from appliance.hsm.profile import HsmProfile, read_pin

T = TypeVar("T")
log = logs.get("hsm.pool")

# Faults after which the session (or the whole token connection) is replaced.
_SESSION_FAULTS: tuple[type[Exception], ...] = (
    p11e.SessionHandleInvalid,
    p11e.SessionClosed,
    p11e.UserNotLoggedIn,
)
_DEVICE_FAULTS: tuple[type[Exception], ...] = (
    p11e.DeviceRemoved,
    p11e.DeviceError,
    p11e.TokenNotPresent,
    p11e.TokenNotRecognised,
)
# Objects looked up earlier are gone (token re-initialised, key deleted): look them up again.
_STALE_OBJECT_FAULTS: tuple[type[Exception], ...] = (
    p11e.ObjectHandleInvalid,
    p11e.KeyHandleInvalid,
)
_OPEN_FAULTS: tuple[type[Exception], ...] = (*_DEVICE_FAULTS, p11e.SessionCount)


class Watcher(Protocol):
    """What the pool asks of a token watcher (:mod:`appliance.hsm.watch`)."""

    def refusal(self) -> HsmError | None: ...

    def suspect(self, fault: Exception) -> bool: ...


@dataclass(eq=False)
class PooledSession:
    """A borrowed session plus objects looked up in it (handles are per session here)."""

    session: Any
    generation: int
    cache: dict[Any, Any] = field(default_factory=dict)


_FAULTS = (*_SESSION_FAULTS, *_DEVICE_FAULTS)
_RETRYABLE = (*_SESSION_FAULTS, *_DEVICE_FAULTS, *_STALE_OBJECT_FAULTS)


class SessionPool:
    """Sessions on one token for every thread of this process."""

    def __init__(self, profile: HsmProfile, borrow_timeout: float = 30.0) -> None:
        self.profile = profile
        self._borrow_timeout = borrow_timeout
        self._reset_state()

    def _reset_state(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._available = threading.Condition(self._lock)
        self._idle: deque[PooledSession] = deque()
        self._waiters = 0
        self._count = 0
        self._token: Any = None
        self._logged_in = False
        self._login_error: HsmLoginError | None = None
        self._generation = 0
        self._closed = False
        self._recovered_at = -1e9
        self._epoch: int | None = None  # the module epoch our sessions belong to
        self.reconnects = 0
        # A forked child starts without one (the parent's watcher thread is not here).
        self.watcher: Watcher | None = None

    # -- public -----------------------------------------------------------

    @property
    def token(self) -> Any:
        """The python-pkcs11 token (label, serial, manufacturer, model...)."""
        self._ensure_process()
        with load_module(self.profile).gate.shared(), self._lock:
            return self._find_token()

    @property
    def size(self) -> int:
        """Sessions currently open (idle and borrowed)."""
        return self._count

    def run(self, fn: Callable[[PooledSession], T], *, retry: bool = True) -> T:
        """Call ``fn`` with a borrowed session; replace the session and retry on token faults.

        ``retry=False`` is for operations that must not run twice (key
        generation): a fault is still reported clearly, the session replaced.
        """
        self._ensure_process()
        watcher = self.watcher
        if watcher is not None:
            return self._run_watched(watcher, fn, retry)
        try:
            return self._run(fn, retry)
        except (HsmUnavailableError, KeyNotFoundError) as exc:
            # The token may have gone and come back: see the module docstring. A busy pool or
            # sessions that broke one by one under the operation are not that: a new session
            # was already tried, and re-initialising would end every other pool's sessions.
            if isinstance(exc, HsmUnavailableError) and not exc.token_gone:
                raise
            if not self._reconnect(exc) or not retry:
                raise
        return self._run(fn, retry)

    def _run_watched(self, watcher: Watcher, fn: Callable[[PooledSession], T],
                     retry: bool) -> T:
        """Refused at once while the watcher knows the token is away; a fault that may mean
        it went away is reported to the watcher, which checks and recovers in the
        background (the request never re-initialises the module nor waits for it)."""
        refused = watcher.refusal()
        if refused is not None:
            raise refused
        try:
            return self._run(fn, retry)
        except (HsmUnavailableError, KeyNotFoundError, HsmLoginError) as exc:
            if isinstance(exc, HsmUnavailableError) and not exc.token_gone:
                raise
            if not watcher.suspect(exc):
                raise
            refused = watcher.refusal()
            if refused is None or refused is exc:
                raise
            raise refused from exc

    # -- for the watcher: checks that bypass its refusal ---------------------------------

    def probe(self) -> None:
        """A cheap check that the token is still there: the slot list and token info (no
        session, nothing a signing thread waits on)."""
        self._ensure_process()
        if self._login_error is not None:
            raise self._login_error
        with self._initialised():
            find_token(self.profile)

    def connect(self) -> None:
        """Have a session open and the pool logged in (a refused PIN raises
        :class:`HsmLoginError`), then check the token is listed."""
        self._ensure_process()
        with self._initialised():
            self._give_back(self._take())
        self.probe()

    def reconnect(self, gate_timeout: float = 2.0) -> None:
        """Re-initialise the module (every session of this process on it ends; waits at
        most ``gate_timeout`` for operations inside it to finish) and :meth:`connect`."""
        self._ensure_process()
        if self._login_error is not None:
            raise self._login_error
        module = load_module(self.profile)
        with module.gate.exclusive(gate_timeout) as alone:
            if not alone:
                busy = HsmUnavailableError("token operations did not finish; re-initialising "
                                           "the module later")
                busy.token_gone = False
                raise busy
            try:
                with startup_lock(self.profile):
                    module.reinitialize()
            finally:
                self._follow_epoch(module)
        self.reconnects += 1
        self.connect()

    @contextmanager
    def _initialised(self) -> Iterator[None]:
        """Inside the module's shared gate (no re-initialisation meanwhile), on sessions of
        its current epoch; refused if the module could not be initialised."""
        module = load_module(self.profile)
        with module.gate.shared():
            self._follow_epoch(module)
            if not module.ready:
                raise HsmUnavailableError(
                    f"the PKCS#11 module {self.profile.module} could not be initialised (token "
                    f"unavailable); it is tried again every "
                    f"{self.profile.reconnect_interval_seconds:g}s")
            yield

    def _run(self, fn: Callable[[PooledSession], T], retry: bool) -> T:
        with self._initialised():
            return self._attempts(fn, retry)

    def _attempts(self, fn: Callable[[PooledSession], T], retry: bool) -> T:
        attempts = (self.profile.max_retries + 1) if retry else 1
        last: Exception | None = None
        for attempt in range(attempts):
            if attempt:
                if self.watcher is not None and self.watcher.refusal() is not None:
                    break  # the token is known to be away: no point waiting to retry
                time.sleep(self.profile.retry_delay_seconds * attempt)
            ps = self._take()
            try:
                result = fn(ps)
            except _FAULTS as exc:
                self._discard(ps, exc)
                last = exc
                if (self.watcher is not None and isinstance(exc, _DEVICE_FAULTS)
                        and self.watcher.suspect(exc)):
                    break  # the token is away (a cheap probe says so): do not wait to retry
            except _STALE_OBJECT_FAULTS as exc:
                ps.cache.clear()
                self._give_back(ps)
                last = exc
            except p11e.PKCS11Error as exc:
                self._give_back(ps)
                raise HsmError(
                    f"token operation failed: {type(exc).__name__} {exc}".strip()
                ) from exc
            except BaseException:
                self._give_back(ps)
                raise
            else:
                self._give_back(ps)
                return result
            log.warning("token fault, retrying",
                        extra={"fault": type(last).__name__, "attempt": attempt + 1})
        err = HsmUnavailableError(
            f"token {self.profile.token.label or self.profile.token.serial} unavailable after "
            f"{attempts} attempt(s): {type(last).__name__}"
        )
        err.token_gone = isinstance(last, _DEVICE_FAULTS)
        raise err from last

    def _reconnect(self, cause: Exception) -> bool:
        """Re-initialise the module (every session of this process on it ends) if the last
        time was long enough ago and no thread is inside it; whether it was done."""
        if self._closed or self._login_error is not None:
            return False
        now = time.monotonic()
        with self._lock:
            if now - self._recovered_at < self.profile.reconnect_interval_seconds:
                return False
            self._recovered_at = now
        module = load_module(self.profile)
        with module.gate.exclusive(self._borrow_timeout) as alone:
            if not alone:
                return False
            try:
                with startup_lock(self.profile):
                    module.reinitialize()
            except HsmError as exc:
                log.error("re-initialising the PKCS#11 module failed; the token is still "
                          "unavailable", extra={"fault": str(exc)[:200]})
                return False
            finally:
                self._follow_epoch(module)
        self.reconnects += 1
        log.warning("token looked gone; the PKCS#11 module was re-initialised",
                    extra={"fault": type(cause).__name__, "reconnects": self.reconnects})
        return True

    def _follow_epoch(self, module: Any) -> None:
        """Forget sessions opened before the module was last re-initialised (by this pool or
        another on the same module): their handles and the login died with that state, so
        they are dropped, never closed. Called with the gate held (shared or alone), so no
        session of the old epoch is borrowed meanwhile."""
        epoch = module.epoch
        if self._epoch == epoch:
            return
        with self._lock:
            if self._epoch is not None and self._epoch != epoch:
                self._count -= len(self._idle)
                self._idle.clear()
                self._token = None
                self._logged_in = False
                self._generation += 1
            self._epoch = epoch

    def close(self) -> None:
        """Close every idle session (borrowed ones close when given back); the login ends
        with the last session."""
        if os.getpid() != self._pid:
            self._reset_state()
            return
        with self._lock:
            self._closed = True
            while self._idle:
                self._count -= 1
                _quiet_close(self._idle.pop().session)
            self._logged_in = self._count > 0
            self._available.notify_all()

    # -- internals --------------------------------------------------------

    def _ensure_process(self) -> None:
        if os.getpid() != self._pid:
            # Forked: the parent's handles mean nothing here. Never close them.
            self._reset_state()

    def _take(self) -> PooledSession:
        if self._pid != os.getpid():
            self._reset_state()
        try:
            return self._idle.pop()  # the fast path: no lock
        except IndexError:
            pass
        deadline = time.monotonic() + request_deadline.wait_seconds(self._borrow_timeout)
        with self._lock:
            self._waiters += 1
            try:
                while True:
                    if self._closed:
                        raise HsmError("the session pool is closed")
                    if self._login_error is not None:
                        raise self._login_error
                    try:
                        return self._idle.pop()
                    except IndexError:
                        pass
                    if self._count < self.profile.pool_size:
                        ps = self._open_session()
                        self._count += 1
                        return ps
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        busy = HsmUnavailableError(
                            f"no token session free within {self._borrow_timeout:.0f}s "
                            f"(pool size {self.profile.pool_size})"
                        )
                        busy.token_gone = False
                        raise busy
                    self._available.wait(remaining)
            finally:
                self._waiters -= 1

    def _give_back(self, ps: PooledSession) -> None:
        if self._closed:
            with self._lock:
                self._count -= 1
                self._logged_in = self._count > 0
            _quiet_close(ps.session)
            return
        self._idle.append(ps)
        if self._waiters:
            with self._lock:
                self._available.notify()

    def _find_token(self) -> Any:
        """The token, looked up under the cross-process start-up lock; the pool lock is held."""
        if self._token is None:
            with startup_lock(self.profile):
                self._token = find_token(self.profile)
        return self._token

    def _open_session(self) -> PooledSession:
        """Open one session (pool lock held, so one at a time); log in if not yet logged in."""
        token = self._find_token()
        try:
            session = token.open(rw=True)
        except _OPEN_FAULTS as exc:
            raise HsmUnavailableError(
                f"cannot open a session on token {token.label!r}: {type(exc).__name__}"
            ) from exc
        if not self._logged_in:
            try:
                self._login(token, session)
            except BaseException:
                _quiet_close(session)
                raise
        self._generation += 1
        return PooledSession(session=session, generation=self._generation)

    def _login(self, token: Any, session: Any) -> None:
        pin = read_pin(self.profile.pin)
        try:
            with startup_lock(self.profile):
                rv = load_module(self.profile).login_user(session.handle, pin)
        finally:
            del pin
        if rv in (CKR_OK, CKR_USER_ALREADY_LOGGED_IN):
            self._logged_in = True
            return
        if rv in LOGIN_REFUSALS:
            self._login_error = HsmLoginError(
                f"token {token.label!r} refused the PIN from {self.profile.pin.describe()} "
                f"({LOGIN_REFUSALS[rv]}); the pool will not try again until restarted"
            )
            log.error("token login failed", extra={"fault": LOGIN_REFUSALS[rv]})
            raise self._login_error
        raise HsmUnavailableError(f"login to token {token.label!r} failed: CKR 0x{rv:08x}")

    def _discard(self, ps: PooledSession, exc: Exception) -> None:
        """Forget a broken session. It is not closed: its handle is already gone or suspect."""
        with self._lock:
            self._count -= 1
            if isinstance(exc, (*_DEVICE_FAULTS, p11e.UserNotLoggedIn)):
                # Every idle session shares the fault (lost login, suspect device): drop them all.
                while self._idle:
                    self._count -= 1
                    _quiet_close(self._idle.pop().session)
            if isinstance(exc, _DEVICE_FAULTS):
                self._token = None
            if isinstance(exc, p11e.UserNotLoggedIn) or self._count <= 0:
                # Login is per application: it is gone when the token says so or no session is left.
                self._logged_in = False
            self._available.notify()


def _quiet_close(session: Any) -> None:
    """Close a session. Pool sessions were opened without a PIN, so this never logs out."""
    with suppress(p11e.PKCS11Error):
        session.close()
