"""One time budget per validation attempt, and the watchdog that enforces it on a socket.

Every step of an attempt (resolution, connect, TLS, each redirect) draws from the same
deadline, so a slow or silent peer cannot hold a worker longer than the configured
timeout however many steps it spreads the delay over.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress

from appliance.acme.validation.errors import ValidationError


class Deadline:
    """One time budget for the whole attempt, shared by every step."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()

    def remaining(self, doing: str, problem: str = "connection") -> float:
        """Seconds left; raises a timeout ValidationError naming *doing* when none are."""
        left = self.left()
        if left <= 0:
            raise self.expired(doing, problem)
        return left

    def expired(self, doing: str, problem: str = "connection") -> ValidationError:
        return ValidationError(problem, f"timed out after {self.seconds:g}s {doing}")


class Watchdog:
    """Shuts a socket down when the deadline passes.

    Socket timeouts bound each recv, not the sum: a peer dripping one byte per second
    into the status line would otherwise outlive the deadline. ``shutdown`` (not
    ``close``) is what wakes a recv blocked in another thread. ``sock`` is replaced by
    the TLS socket after a handshake (wrapping detaches the plain one).
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.fired = False

    def fire(self) -> None:
        self.fired = True
        # The base-class method on purpose: SSLSocket.shutdown also drops its SSL
        # object, which would race with the thread still reading from it.
        with suppress(OSError):
            socket.socket.shutdown(self.sock, socket.SHUT_RDWR)


@contextmanager
def watchdog(sock: socket.socket, deadline: Deadline) -> Iterator[Watchdog]:
    """Arm a :class:`Watchdog` for the rest of the deadline; close the socket on exit."""
    watch = Watchdog(sock)
    timer = threading.Timer(max(deadline.left(), 0.0), watch.fire)
    timer.daemon = True
    timer.start()
    try:
        yield watch
    finally:
        timer.cancel()
        watch.sock.close()

