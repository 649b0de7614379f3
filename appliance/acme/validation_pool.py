"""A bounded, per-process pool of threads that run ACME challenge validations.

Why: a validation talks to a host the client names (http-01, tls-alpn-01) or to DNS,
and may take up to the validation timeout. Run inside the challenge request, a few
slow or silent targets would hold every request worker of the API. Here the request
only claims the challenge ("processing") and hands the attempt to this pool; it waits
a short, configured time so that quick validations still answer with their outcome,
then returns.

The pool is bounded: when every slot is busy, ``try_submit`` says no and the client is
told to retry (``rateLimited``) instead of work queueing without limit. Threads are
made lazily in the process that uses them, so a pool created before gunicorn forks is
never shared with (or lost by) a worker.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from appliance import logs

log = logs.get("acme")


class ValidationPool:
    def __init__(self, max_concurrent: int) -> None:
        if max_concurrent < 1:
            raise ValueError("max_concurrent must be at least 1")
        self.max_concurrent = max_concurrent
        self._lock = threading.Lock()
        self._pid = -1
        self._executor: ThreadPoolExecutor | None = None
        self._in_use = 0

    def _executor_here(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._executor is None or self._pid != os.getpid():
                # A new process (fork) inherits neither threads nor held slots.
                self._executor = ThreadPoolExecutor(
                    max_workers=self.max_concurrent, thread_name_prefix="acme-validate")
                self._in_use = 0
                self._pid = os.getpid()
            return self._executor

    def reserve(self) -> bool:
        """Take a slot without waiting; False when the pool is full."""
        self._executor_here()
        with self._lock:
            if self._in_use >= self.max_concurrent:
                return False
            self._in_use += 1
            return True

    def release(self) -> None:
        """Give back a slot: the job ended, or the claim it was reserved for lost a race."""
        with self._lock:
            self._in_use = max(0, self._in_use - 1)

    def submit(self, job: Callable[[], None]) -> Future[None]:
        """Run ``job`` on a slot taken by :meth:`reserve`; the slot is freed when it ends."""
        def run() -> None:
            try:
                job()
            except Exception:  # the job records its own outcome; this is the backstop
                log.exception("ACME validation job failed")
                raise
            finally:
                self.release()

        try:
            return self._executor_here().submit(run)
        except RuntimeError:  # interpreter shutting down: the slot is not used
            self.release()
            raise

    def busy(self) -> int:
        """Slots in use (for metrics and tests)."""
        with self._lock:
            return self._in_use
