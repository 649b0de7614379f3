"""The lifecycle every background thread of ``serve``'s parent shares (the heartbeat, the
CRL timer, an RA node's jobs): started once, asked to stop from a signal handler without
waiting, joined with a bound at the end. What each does is its own ``_run``, which must
return soon after ``self._stop`` is set."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod


class ParentThread(ABC):
    name = "background"

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def request_stop(self) -> None:
        """From a signal handler: ask, do not wait."""
        self._stop.set()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    @abstractmethod
    def _run(self) -> None:
        """The thread's work; returns soon after ``self._stop`` is set."""
