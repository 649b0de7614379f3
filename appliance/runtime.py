"""One process's view of the appliance: configuration, token pool, database, audit log.

Everything is opened lazily, in the process that uses it, so a server can
load this before forking workers without sharing token sessions or database
connections across processes. The token's self-tests run once per process
before the first signing operation, after the installation's mode is checked against
this node's configuration (:meth:`Appliance.require_mode`).
"""

from __future__ import annotations

import getpass
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from appliance import logs
from appliance.audit import anchor
from appliance.audit.anchor import Anchor, AnchorWriter
from appliance.audit.log import Actor, AuditLog
from appliance.audit.signer import CheckpointSigner
from appliance.config import Settings
from appliance.errors import ApplianceError, KeyNotFoundError
from appliance.fips import mode as fips_mode
from appliance.fips import selftest as fips_selftest
from appliance.hsm import keys, selftest
from appliance.hsm.pool import SessionPool
from appliance.hsm.profile import HsmProfile, load_profile
from appliance.hsm.signer import token_private_key
from appliance.store.db import Database
from appliance.store.epochs import EpochCache
from appliance.x509 import algorithms

log = logs.get("runtime")


def cli_actor(role: str = "operator") -> Actor:
    """The person at this terminal, as the audit log names them."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return Actor(f"cli:{user}@{socket.gethostname()}", role)


def fips_table_of(profile: HsmProfile) -> algorithms.Table:
    """The FIPS table for this token: Ed25519 only where the profile declares EdDSA in its
    validated module. The one place the mode's table is chosen (workers and the API front)."""
    return algorithms.fips_table(profile.eddsa_validated)


class Appliance:
    def __init__(self, settings: Settings, *, wait_seconds: float | None = None) -> None:
        """``wait_seconds``: in the service, the longest any request waits for the database's
        lock or connection and for a token session (``service.deadline_seconds``); the
        CLI keeps the database's own busy timeout."""
        self.settings = settings
        self.wait_seconds = wait_seconds
        self._profile: HsmProfile | None = None
        self._pool: SessionPool | None = None
        self._db: Database | None = None
        self._selftested = False
        self._lock = threading.Lock()
        self._service_checkpoints = False
        self._service_log: AuditLog | None = None
        self._service_signer_retry = 0.0
        self._on_close: list[Callable[[], None]] = []
        self._epoch_caches: dict[str, EpochCache[Any, Any]] = {}
        # FIPS mode: this process's error state (a failed self-test), and whether the
        # integrity test may pass before the first seal (set by init/quickstart/seal only).
        self.fips_state = fips_selftest.ErrorState(watch_rng=settings.config.fips.enabled)
        self._fips_lock = threading.RLock()
        self._fips_running = False
        self.fips_allow_unsealed = False
        self._mode: fips_mode.Mode | None = None
        self._table_before: algorithms.Table | None = None
        if settings.config.fips.enabled:
            # From the file alone, at once: no request of a process configured for FIPS
            # mode ever meets the wider table, even before the database is read (only ever
            # a narrowing; a file that disagrees with the database is refused at the gate).
            self._use_fips_table()

    @property
    def node_id(self) -> str:
        return self.settings.node_id

    @property
    def hsm_profile(self) -> HsmProfile:
        """The token profile the configuration names, read once (``config`` only knows its
        path, so the ground floor does not depend on the token room)."""
        if self._profile is None:
            self._profile = load_profile(self.settings.hsm_profile_path)
        return self._profile

    @property
    def pool(self) -> SessionPool:
        with self._lock:
            if self._pool is None:
                self._pool = SessionPool(self.hsm_profile,
                                         borrow_timeout=self.wait_seconds or 30.0)
            return self._pool

    def require_mode(self) -> fips_mode.Mode:
        """The installation's mode, checked once against this node's configuration
        (:class:`~appliance.fips.mode.FipsModeMismatch` if they differ, checked again next
        time); in FIPS mode the FIPS algorithm table is then the one in force. ``serve``
        calls it before it starts any worker, every key use through :meth:`signing_pool`."""
        if self._mode is None:
            found = fips_mode.require_consistent(self.settings, self.db)
            if found == "fips":
                self._use_fips_table()
            self._mode = found
        return self._mode

    def _use_fips_table(self) -> None:
        """Install the FIPS table (``close`` puts back the one it replaced, so an appliance
        opened inside a test leaves the process as it found it)."""
        if self._table_before is None:
            self._table_before = algorithms.current()
        algorithms.install(fips_table_of(self.hsm_profile))

    def signing_pool(self) -> SessionPool:
        """The pool, after this node's mode is checked and the power-on self-tests have
        passed in this process."""
        self.require_mode()
        pool = self.pool
        if self.settings.config.fips.enabled:
            return self._fips_signing_pool(pool)
        if not self._selftested:
            selftest.require(pool)
            self._selftested = True
        return pool

    def _fips_signing_pool(self, pool: SessionPool) -> SessionPool:
        """FIPS mode: the full power-on tests once per process (recorded and audited), and
        the error state refuses every later use after any failure (FipsError)."""
        self.fips_state.check()
        with self._fips_lock:
            if not self._selftested:
                if self._fips_running:  # the tests' own record asked for a signing key
                    raise fips_selftest.FipsError("the token was asked to sign before the "
                                                  "power-on self-tests finished")
                self._fips_running = True
                try:
                    fips_selftest.power_on(self, pool, self.fips_state,
                                           allow_unsealed=self.fips_allow_unsealed)
                finally:
                    self._fips_running = False
                self._selftested = True
        self.fips_state.check()
        return pool

    @property
    def db(self) -> Database:
        with self._lock:
            if self._db is None:
                cfg = self.settings.config.database
                wait = cfg.busy_timeout_seconds
                if self.wait_seconds is not None:
                    wait = min(wait, self.wait_seconds)
                self._db = Database(self.settings.database_url, wait, cfg.pool_size)
            return self._db

    def epoch_cache(self, scope: str, name: str, maxsize: int) -> EpochCache[Any, Any]:
        """This process's cache ``name`` of issuance state of ``scope``, valid while that
        scope's epoch is unchanged (``appliance.store.epochs``). One per ``Appliance``:
        never shared by two databases (two apps in one process stand for two workers)."""
        with self._lock:
            cache = self._epoch_caches.get(name)
            if cache is None:
                cache = self._epoch_caches[name] = EpochCache(scope, maxsize)
            return cache

    def enable_service_checkpoints(self) -> None:
        """The service's records checkpoint (and anchor) as they become due, so
        ``audit.checkpoint_every: 1`` means every commit there too
        (``audit.checkpoint_in_service``)."""
        self._service_checkpoints = self.settings.config.audit.checkpoint_in_service

    def audit_log(self, *, signing: bool = False) -> AuditLog:
        """The audit log of this node; with ``signing`` it can sign checkpoints (in the
        service it can whenever the audit key is reachable)."""
        if not signing and self._service_checkpoints:
            return self._service_audit_log()
        cfg = self.settings.config.audit
        signer = self.checkpoint_signer() if signing else None
        anchors = None
        if signing:
            # the token witness writes through the pool the audit signer signs with
            anchors = AnchorWriter(self.signing_pool() if cfg.anchor_token else None,
                                   self.anchor_file(), cfg.anchor_syslog)
        return AuditLog(self.node_id, signer, cfg.checkpoint_every,
                        cfg.checkpoint_interval_seconds, anchors)

    def _service_audit_log(self) -> AuditLog:
        """One signing audit log per process, made on first use; while the audit key cannot
        be reached (no key yet, token away) records are written without checkpoints, and
        the key is looked for again a minute later."""
        if self._service_log is not None:
            return self._service_log
        cfg = self.settings.config.audit
        now = time.monotonic()
        if now >= self._service_signer_retry:
            try:
                self._service_log = self.audit_log(signing=True)
                return self._service_log
            except ApplianceError as exc:
                self._service_signer_retry = now + 60
                log.warning("audit checkpoints in the service are off until the audit key "
                            "can be reached", extra={"fault": type(exc).__name__})
        return AuditLog(self.node_id, None, cfg.checkpoint_every, cfg.checkpoint_interval_seconds)

    def audit_key_reachable_again(self) -> None:
        """The token is back: look for the audit key at the next record, not a minute on."""
        if self._service_log is None:
            self._service_signer_retry = 0.0

    def anchor_file(self) -> Path | None:
        path = self.settings.config.audit.anchor_file
        if path is None:
            return None
        return path if path.is_absolute() else self.settings.base_dir / path

    def audit_anchors(self, anchor_file: Path | None = None) -> list[Anchor]:
        """The checkpoints held outside the database: the token's (when configured) and an
        anchor file's (``anchor_file``, else the configured one when it exists)."""
        out: list[Anchor] = []
        if self.settings.config.audit.anchor_token:
            out += anchor.read_token(self.pool)
        path = anchor_file or self.anchor_file()
        if path is not None and (anchor_file is not None or path.exists()):
            out += anchor.read_file(path)
        return anchor.unique(out)

    def checkpoint_signer(self) -> CheckpointSigner:
        label = self.settings.config.audit.key_label
        pool = self.signing_pool()
        try:
            info = keys.find_key(pool, label)
        except KeyNotFoundError as exc:
            raise KeyNotFoundError(
                f"{exc}; create it with: appliance hsm genkey --label {label} --type ec-p256"
            ) from exc
        return CheckpointSigner(token_private_key(pool, info))

    def audit_public_key(self) -> Any:
        return keys.find_key(self.pool, self.settings.config.audit.key_label).public_key

    def on_close(self, stop: Callable[[], None]) -> None:
        """Have ``close`` call ``stop`` first (a background thread of this process, which
        must not outlive the pool and the database it uses)."""
        self._on_close.append(stop)

    def close(self) -> None:
        while self._on_close:
            self._on_close.pop()()
        if self._pool is not None:
            self._pool.close()
        if self._db is not None:
            self._db.dispose()
        if self._table_before is not None:
            algorithms.install(self._table_before)
            self._table_before = None
