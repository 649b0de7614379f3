"""Loading a PKCS#11 module so that many threads may call it.

python-pkcs11 initialises modules with ``C_Initialize(NULL)``, which (PKCS#11
v2.40 §5.4) tells the module the application will not call it from several
threads at once; SoftHSM then runs without its mutexes and crashes under a
multi-threaded pool. The subclass below initialises the module itself with
``CKF_OS_LOCKING_OK`` through ``ctypes`` (the same loaded library, so
python-pkcs11 then talks to a module that locks). A process forked after the
module was initialised finalises it and initialises it again, as PKCS#11
requires of a child process.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import stat
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pkcs11 import exceptions as p11e
from pkcs11._pkcs11 import lib as _Pkcs11Lib

from appliance import logs
from appliance.errors import ConfigError, HsmError, HsmUnavailableError
from appliance.hsm.profile import HsmProfile

log = logs.get("hsm.module")
CKF_OS_LOCKING_OK = 0x00000002
CKR_OK = 0x0
CKR_CRYPTOKI_ALREADY_INITIALIZED = 0x191
CKR_CRYPTOKI_NOT_INITIALIZED = 0x190
CKR_USER_ALREADY_LOGGED_IN = 0x100
CKU_USER = 1
# C_Login return values that mean "this PIN is wrong or unusable": never retry them.
LOGIN_REFUSALS = {
    0xA0: "CKR_PIN_INCORRECT", 0xA1: "CKR_PIN_INVALID", 0xA2: "CKR_PIN_LEN_RANGE",
    0xA3: "CKR_PIN_EXPIRED", 0xA4: "CKR_PIN_LOCKED", 0x102: "CKR_USER_PIN_NOT_INITIALIZED",
}


class _InitArgs(ctypes.Structure):
    _fields_ = [
        ("CreateMutex", ctypes.c_void_p),
        ("DestroyMutex", ctypes.c_void_p),
        ("LockMutex", ctypes.c_void_p),
        ("UnlockMutex", ctypes.c_void_p),
        ("flags", ctypes.c_ulong),
        ("pReserved", ctypes.c_void_p),
    ]


class ModuleGate:
    """Every call into a module holds the gate shared; re-initialising it holds it alone.

    ``C_Finalize`` while another thread is inside the module is undefined behaviour (SoftHSM
    frees what that call is using), so a reconnect waits until no thread is in a token
    operation and lets none start until it is done. Shared holds nest in one thread (an
    operation that calls another never waits for itself)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._active = 0
        self._exclusive = False
        self._depth = threading.local()

    @contextmanager
    def shared(self) -> Iterator[None]:
        depth = getattr(self._depth, "n", 0)
        with self._cond:
            while self._exclusive and depth == 0:
                self._cond.wait()
            self._active += 1
        self._depth.n = depth + 1
        try:
            yield
        finally:
            self._depth.n = depth
            with self._cond:
                self._active -= 1
                if self._active == 0:
                    self._cond.notify_all()

    @contextmanager
    def exclusive(self, timeout: float) -> Iterator[bool]:
        """Yields whether the gate is held alone: False if another thread is re-initialising
        already, or operations did not finish within ``timeout``."""
        nested: int = getattr(self._depth, "n", 0)
        with self._cond:
            if self._exclusive or nested:
                got = False
            else:
                self._exclusive = True
                deadline = time.monotonic() + timeout
                while self._active and (left := deadline - time.monotonic()) > 0:
                    self._cond.wait(left)
                got = self._active == 0
                if not got:
                    self._exclusive = False
                    self._cond.notify_all()
        try:
            yield got
        finally:
            if got:
                with self._cond:
                    self._exclusive = False
                    self._cond.notify_all()


class ThreadSafeModule(_Pkcs11Lib):
    """A python-pkcs11 ``lib`` whose module is initialised for OS locking."""

    _c: ctypes.CDLL
    _init_pid: int
    gate: ModuleGate
    ready: bool = True  # False after a re-initialisation failed: nothing may call in
    # Bumped by every re-initialisation: every pool on this module (not only the one that
    # asked) must then forget its sessions, token and login, which died with the old state.
    epoch: int = 0

    def initialize(self) -> None:
        c = ctypes.CDLL(self.so)
        self._c = c
        if getattr(self, "_init_pid", None) not in (None, os.getpid()):
            # Forked child: the parent's module state is not ours; start over.
            c.C_Finalize(None)
        self.gate = ModuleGate()  # a forked child's threads are not the parent's
        args = _InitArgs(None, None, None, None, CKF_OS_LOCKING_OK, None)
        rv = c.C_Initialize(ctypes.byref(args))
        if rv == CKR_CRYPTOKI_ALREADY_INITIALIZED:
            log.warning("PKCS#11 module was already initialised by other code in this "
                        "process; it may not be running with OS locking",
                        extra={"pkcs11_module": self.so})
        elif rv != CKR_OK:
            raise HsmError(f"C_Initialize of {self.so} failed: CKR 0x{rv:08x}")
        self._init_pid = os.getpid()

    def reinitialize(self) -> None:
        """``C_Finalize`` then ``C_Initialize``: every session and login of this process
        ends, and the module sees its tokens afresh (SoftHSM reads its token store only at
        ``C_Initialize``, and a token whose files went away stays invalid until then).
        The caller holds ``gate.exclusive``."""
        self.ready = False
        self.epoch += 1
        self._c.C_Finalize(None)
        args = _InitArgs(None, None, None, None, CKF_OS_LOCKING_OK, None)
        rv = self._c.C_Initialize(ctypes.byref(args))
        if rv not in (CKR_OK, CKR_CRYPTOKI_ALREADY_INITIALIZED):
            # SoftHSM refuses to initialise while its token store is missing: stay not
            # ready (every call says so) until a later attempt succeeds.
            raise HsmUnavailableError(f"C_Initialize of {self.so} failed: CKR 0x{rv:08x}")
        self.ready = True

    def login_user(self, session_handle: int, pin: str) -> int:
        """``C_Login(CKU_USER)`` on an open session; returns the CKR code.

        Done here rather than by python-pkcs11's ``Token.open(user_pin=...)``,
        which leaks the session when the PIN is refused and marks the session
        as one whose ``close()`` logs the whole application out.
        """
        data = pin.encode("utf-8")
        rv: int = self._c.C_Login(ctypes.c_ulong(session_handle), ctypes.c_ulong(CKU_USER),
                                  ctypes.c_char_p(data), ctypes.c_ulong(len(data)))
        return rv


_modules: dict[str, tuple[int, Any]] = {}
_modules_lock = threading.Lock()


def load_module(profile: HsmProfile) -> Any:
    """The PKCS#11 module of ``profile``, initialised (for threads) in this process."""
    path = str(profile.module)
    with _modules_lock:
        cached = _modules.get(path)
        if cached is not None:
            pid, module = cached
            if pid != os.getpid():
                module.initialize()
                _modules[path] = (os.getpid(), module)
            return module
        if not profile.module.exists():
            raise ConfigError(f"PKCS#11 module {path} does not exist")
        for key, value in profile.module_env.items():
            os.environ[key] = value
        try:
            module = ThreadSafeModule(path)
        except p11e.PKCS11Error as exc:
            raise HsmError(f"cannot load PKCS#11 module {path}: {exc!r}") from exc
        # Loaded modules live as long as the process: python-pkcs11's deallocator cannot
        # run on a subclass at interpreter exit, and the OS reclaims everything then.
        ctypes.pythonapi.Py_IncRef(ctypes.py_object(module))
        _modules[path] = (os.getpid(), module)
        return module


@contextmanager
def startup_lock(profile: HsmProfile) -> Iterator[None]:
    """Hold the profile's cross-process start-up lock (see ``HsmProfile.startup_lock``)."""
    path = profile.startup_lock_path()
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.lstat(path.parent)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
            raise ConfigError(
                f"token start-up lock folder {path.parent} must be a directory owned by this "
                "user and writable by no one else"
            )
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise ConfigError(f"cannot open token start-up lock {path}: {exc.strerror}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def find_token(profile: HsmProfile) -> Any:
    """The one token the profile selects, or a clear error.

    Slots are walked here rather than with python-pkcs11's ``get_token``, which
    gives up on the first slot that errors: one broken slot (a removed token, a
    wiped store) must not hide the token we want.
    """
    module = load_module(profile)
    want_label, want_serial = profile.token.label, profile.token.serial
    matches, broken = [], []
    try:
        slots = module.get_slots(token_present=True)
    except p11e.PKCS11Error as exc:
        raise HsmError(f"cannot list the slots of {profile.module}: {type(exc).__name__}") from exc
    for slot in slots:
        try:
            token = slot.get_token()
            label, serial = token.label, token_text(token.serial)
        except p11e.PKCS11Error as exc:
            broken.append(f"slot {slot.slot_id}: {type(exc).__name__}")
            continue
        if want_label is not None and label != want_label:
            continue
        if want_serial is not None and serial != want_serial:
            continue
        matches.append(token)
    wanted = {"label": want_label, "serial": want_serial}
    if len(matches) > 1:
        raise HsmError(f"more than one token matches {wanted}; select by serial")
    if not matches:
        extra = f" (unreadable: {', '.join(broken)})" if broken else ""
        raise HsmUnavailableError(f"no token matches {wanted} in {profile.module}{extra}")
    return matches[0]


def token_text(value: Any) -> str:
    """A token string attribute (label, serial) as clean text; some modules give bytes."""
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    return str(value).strip()
