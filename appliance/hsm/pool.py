"""A pool of PKCS#11 sessions, safe for threads and for forked worker processes.

Why a pool: one PKCS#11 session must not be used by two threads at once, and
opening a session per operation costs more than the signature. Each caller
borrows a whole session and gives it back.

Why these rules:

* The module is loaded (for multi-threaded use, see :mod:`appliance.hsm.module`)
  and sessions are opened in the process that uses them. A process forked
  after the parent loaded the module re-initialises it and starts with no
  sessions.
* Login state belongs to the application, not to one session. The pool logs in
  on the first session only and opens the rest without a PIN, so closing one of
  them never calls ``C_Logout`` (which would log out every session).
* Sessions are opened one at a time, and a refused PIN stops the pool for good:
  a wrong PIN must not be retried into a token lockout.
* A session the token has invalidated, or a token that reports a device error,
  is replaced and the operation retried a bounded number of times; after that
  the caller gets :class:`HsmUnavailableError`.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pkcs11 import exceptions as p11e

from appliance import logs
from appliance.errors import HsmError, HsmLoginError, HsmUnavailableError
from appliance.hsm.module import find_token, startup_lock
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
_LOGIN_FAULTS: tuple[type[Exception], ...] = (
    p11e.PinIncorrect,
    p11e.PinInvalid,
    p11e.PinLenRange,
    p11e.PinLocked,
    p11e.PinExpired,
    p11e.UserPinNotInitialized,
)

@dataclass(eq=False)
class PooledSession:
    """A borrowed session plus objects looked up in it (handles are per session here)."""

    session: Any
    generation: int
    cache: dict[Any, Any] = field(default_factory=dict)


class SessionPool:
    """Sessions on one token for every thread of this process."""

    def __init__(self, profile: HsmProfile, borrow_timeout: float = 30.0) -> None:
        self.profile = profile
        self._borrow_timeout = borrow_timeout
        self._lock = threading.Lock()
        self._reset_state()

    def _reset_state(self) -> None:
        self._pid = os.getpid()
        self._idle: queue.LifoQueue[PooledSession] = queue.LifoQueue()
        self._count = 0
        self._token: Any = None
        self._login_session: Any = None
        self._logged_in = False
        self._login_error: HsmLoginError | None = None
        self._generation = 0
        self._closed = False

    # -- public -----------------------------------------------------------

    @property
    def token(self) -> Any:
        """The python-pkcs11 token (label, serial, manufacturer, model...)."""
        self._ensure_process()
        with self._lock:
            if self._token is None:
                with startup_lock(self.profile):
                    self._token = find_token(self.profile)
            return self._token

    @property
    def size(self) -> int:
        """Sessions currently open (idle and borrowed)."""
        return self._count

    def run(self, fn: Callable[[PooledSession], T], *, retry: bool = True) -> T:
        """Call ``fn`` with a borrowed session; replace the session and retry on token faults.

        ``retry=False`` is for operations that must not run twice (key
        generation): a fault is still reported clearly, the session replaced.
        """
        attempts = (self.profile.max_retries + 1) if retry else 1
        last: Exception | None = None
        for attempt in range(attempts):
            if attempt:
                time.sleep(self.profile.retry_delay_seconds * attempt)
            try:
                with self._borrow() as ps:
                    try:
                        return fn(ps)
                    except _STALE_OBJECT_FAULTS:
                        ps.cache.clear()
                        raise
            except (*_SESSION_FAULTS, *_DEVICE_FAULTS, *_STALE_OBJECT_FAULTS) as exc:
                last = exc
                log.warning(
                    "token fault, retrying",
                    extra={"fault": type(exc).__name__, "attempt": attempt + 1},
                )
            except p11e.PKCS11Error as exc:
                raise HsmError(
                    f"token operation failed: {type(exc).__name__} {exc}".strip()
                ) from exc
        raise HsmUnavailableError(
            f"token {self.profile.token.label or self.profile.token.serial} unavailable after "
            f"{attempts} attempt(s): {type(last).__name__}"
        ) from last

    def close(self) -> None:
        """Close every idle session, logging out last (borrowed ones close on return)."""
        if os.getpid() != self._pid:
            self._reset_state()
            return
        with self._lock:
            self._closed = True
            while True:
                try:
                    ps = self._idle.get_nowait()
                except queue.Empty:
                    break
                self._count -= 1
                if ps.session is not self._login_session:
                    _quiet_close(ps.session)
            if self._login_session is not None:
                _quiet_close(self._login_session)
            self._login_session = None
            self._logged_in = False

    # -- internals --------------------------------------------------------

    def _ensure_process(self) -> None:
        if os.getpid() != self._pid:
            # Forked: the parent's handles mean nothing here. Never close them.
            self._reset_state()

    @contextmanager
    def _borrow(self) -> Iterator[PooledSession]:
        self._ensure_process()
        if self._closed:
            raise HsmError("the session pool is closed")
        ps = self._take()
        healthy = False
        try:
            yield ps
            healthy = True
        except _SESSION_FAULTS + _DEVICE_FAULTS as exc:
            self._discard(ps, exc)
            raise
        except BaseException:
            healthy = True
            raise
        finally:
            if healthy and not self._closed:
                self._idle.put(ps)
            elif healthy:
                with self._lock:
                    self._count -= 1
                if ps.session is not self._login_session:
                    _quiet_close(ps.session)

    def _take(self) -> PooledSession:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            pass
        with self._lock:
            if self._login_error is not None:
                raise self._login_error
            if self._count < self.profile.pool_size:
                ps = self._open_session()
                self._count += 1
                return ps
        try:
            return self._idle.get(timeout=self._borrow_timeout)
        except queue.Empty:
            raise HsmUnavailableError(
                f"no token session free within {self._borrow_timeout:.0f}s "
                f"(pool size {self.profile.pool_size})"
            ) from None

    def _open_session(self) -> PooledSession:
        """Open one session; called with the lock held so sessions open one at a time."""
        try:
            if not self._logged_in:
                pin = read_pin(self.profile.pin)
                try:
                    with startup_lock(self.profile):
                        if self._token is None:
                            self._token = find_token(self.profile)
                        try:
                            session = self._token.open(rw=True, user_pin=pin)
                        except p11e.UserAlreadyLoggedIn:
                            session = self._token.open(rw=True)
                finally:
                    del pin
                self._login_session = session
                self._logged_in = True
            else:
                if self._token is None:
                    with startup_lock(self.profile):
                        self._token = find_token(self.profile)
                session = self._token.open(rw=True)
        except _LOGIN_FAULTS as exc:
            self._login_error = HsmLoginError(
                f"token {self._token.label!r} refused the PIN from "
                f"{self.profile.pin.describe()} ({type(exc).__name__}); "
                "the pool will not try again until restarted"
            )
            log.error("token login failed", extra={"fault": type(exc).__name__})
            raise self._login_error from exc
        except _OPEN_FAULTS as exc:
            raise HsmUnavailableError(
                f"cannot open a session on token {self._token.label!r}: {type(exc).__name__}"
            ) from exc
        self._generation += 1
        return PooledSession(session=session, generation=self._generation)

    def _discard(self, ps: PooledSession, exc: Exception) -> None:
        """Forget a broken session. It is not closed: its handle is already gone or suspect."""
        with self._lock:
            self._count -= 1
            if ps.session is self._login_session:
                self._login_session = None
            if isinstance(exc, (*_DEVICE_FAULTS, p11e.UserNotLoggedIn)):
                # Every idle session shares the fault (lost login, suspect device): drop them all.
                while True:
                    try:
                        idle = self._idle.get_nowait()
                    except queue.Empty:
                        break
                    self._count -= 1
                    if idle.session is not self._login_session:
                        _quiet_close(idle.session)
                self._login_session = None
            if isinstance(exc, _DEVICE_FAULTS):
                self._token = None
            if isinstance(exc, p11e.UserNotLoggedIn) or self._count <= 0:
                # Login is per application: it is gone when the token says so or no session is left.
                self._logged_in = False


def _quiet_close(session: Any) -> None:
    with suppress(p11e.PKCS11Error):
        session.close()
