"""Service metrics shared by the API's worker processes (Prometheus text exposition).

Why files: a scrape reaches one worker at random, but the numbers are per process (each
worker has its own token watcher), and a worker that died must not take its counts with
it. So each process keeps its values in one small JSON file of its own, replaced
atomically when a value changes, and a scrape reads them all:

* counters are summed over every file of this server (live and dead workers), so they
  only ever grow while the server runs;
* gauges are the minimum over live workers (``appliance_token_available`` is 1 only if
  every worker can sign), with dead workers' files ignored.

A file names its parent (the process that forked the workers) and its own pid: files of
an earlier server (another parent, no longer running) are removed when a worker starts.
"""

from __future__ import annotations

import json
import os
import threading
from contextlib import suppress
from pathlib import Path
from typing import Literal

MetricType = Literal["counter", "gauge"]
METRICS: dict[str, tuple[MetricType, str]] = {
    "appliance_token_available": (
        "gauge", "1 when every live API worker has the token (logged in), else 0"),
    "appliance_token_losses_total": (
        "counter", "Times an API worker lost the token"),
    "appliance_token_recoveries_total": (
        "counter", "Times an API worker got the token back without a restart"),
    "appliance_token_pin_refusals_total": (
        "counter", "Times the token refused the PIN (never retried until restart)"),
    "appliance_database_available": (
        "gauge", "1 when every live API worker's database probe answered, else 0"),
    "appliance_api_busy_total": (
        "counter", "Requests answered 503 at once: every thread busy and the wait queue full"),
    "appliance_api_deadline_expired_total": (
        "counter", "Requests answered 503 after waiting service.deadline_seconds for a thread"),
    "appliance_api_connections_refused_total": (
        "counter", "Connections reset at accept: a per-worker or per-address cap was reached"),
    "appliance_api_handshake_failures_total": (
        "counter", "TLS handshakes that failed or timed out"),
}
WORKERS = "appliance_api_workers"


def _start_time(pid: int) -> str | None:
    """The process's start time (from /proc): a pid reused by another process differs."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


class ProcessMetrics:
    """This process's values, mirrored into its own file on every change."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.pid, self.parent = os.getpid(), os.getppid()
        self._started = _start_time(self.pid)
        self._lock = threading.Lock()
        self._values: dict[str, float] = {
            name: 0.0 for name, (kind, _) in METRICS.items() if kind == "counter"}
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._remove_stale()

    @property
    def path(self) -> Path:
        return self.directory / f"{self.parent}.{self.pid}.json"

    def inc(self, name: str, by: float = 1.0) -> None:
        with self._lock:
            self._values[name] = self._values.get(name, 0.0) + by
            self._write()

    def set(self, name: str, value: float) -> None:
        with self._lock:
            self._values[name] = value
            self._write()

    def _write(self) -> None:
        doc = {"pid": self.pid, "started": self._started, "values": self._values}
        tmp = self.path.with_suffix(".tmp")
        with suppress(OSError):  # metrics must never fail what they describe
            tmp.write_text(json.dumps(doc))
            os.replace(tmp, self.path)

    def _remove_stale(self) -> None:
        """Files left by an earlier server: their parent is gone."""
        for path in self.directory.glob("*.json"):
            parent = path.name.split(".", 1)[0]
            if parent.isdigit() and int(parent) != self.parent and not _alive(int(parent)):
                with suppress(OSError):
                    path.unlink()

    def close(self) -> None:
        """Keep the file (its counts stay in the sums); only the gauges stop counting."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def exposition(directory: Path, parent: int) -> str:
    """The text a scrape gets: counters summed over every worker of ``parent``, gauges
    the minimum over its live workers."""
    counters: dict[str, float] = {}
    gauges: dict[str, float] = {}
    live = 0
    for path in sorted(directory.glob(f"{parent}.*.json")):
        try:
            doc = json.loads(path.read_text())
            values = {str(k): float(v) for k, v in doc["values"].items()}
            pid, started = int(doc["pid"]), doc.get("started")
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
        alive = started is not None and _start_time(pid) == started
        live += alive
        for name, value in values.items():
            kind = METRICS.get(name, ("gauge", ""))[0]
            if kind == "counter":
                counters[name] = counters.get(name, 0.0) + value
            elif alive:
                gauges[name] = min(gauges.get(name, value), value)
    lines: list[str] = []
    for name, (kind, help_text) in METRICS.items():
        value = counters.get(name, 0.0) if kind == "counter" else gauges.get(name, -1.0)
        if value < 0:  # a gauge no live worker reports
            continue
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name} {value:g}"]
    lines += [f"# HELP {WORKERS} API worker processes reporting metrics",
              f"# TYPE {WORKERS} gauge", f"{WORKERS} {live}"]
    return "\n".join(lines) + "\n"
