"""The reservation sweeper: a thread in every API worker that ends abandoned reservations.

A reservation left by a killed request must end whether or not traffic follows, so this
runs on its own clock instead of in passing. Every worker of every node runs one; they
need no coordination, because ``Issuer.reconcile_abandoned`` ends each row with an update
conditional on its status (one of any number of racing sweepers wins, and only the winner
audits). A database error is logged and the next period tries again.
"""

from __future__ import annotations

import random
import threading

from appliance import logs
from appliance.issuance.pipeline import Issuer, reservation_timeout

__all__ = ["MAX_PERIOD_SECONDS", "ReservationSweeper", "period_seconds"]

log = logs.get("issuance.sweeper")
MAX_PERIOD_SECONDS = 30.0


def period_seconds(issuer: Issuer) -> float:
    """How often to look: a reservation is ended at most this long after it became due."""
    return min(MAX_PERIOD_SECONDS, reservation_timeout(issuer.app.settings.config) / 2)


class ReservationSweeper:
    def __init__(self, issuer: Issuer) -> None:
        self.issuer = issuer
        self.period = period_seconds(issuer)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="reservation-sweeper",
                                        daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the thread to end and wait for a sweep in progress (its transaction)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _run(self) -> None:
        failing = False
        while not self._stop.is_set():
            try:
                self.issuer.reconcile_abandoned()
                if failing:
                    log.info("sweeping abandoned reservations works again")
                failing = False
            except Exception as exc:
                # Logged once per outage with its cause, not every period.
                if not failing:
                    log.warning("sweeping abandoned reservations failed; retrying every "
                                f"{self.period:g} s", extra={"error": repr(exc)[:300]})
                failing = True
            # A little earlier than the period, at a random point: the workers of a node
            # (all started together) do not all query at the same moment.
            self._stop.wait(self.period * random.uniform(0.75, 1.0))  # noqa: S311 (timing only)
