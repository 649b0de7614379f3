"""The RA node's background work: ONE thread per node, in ``serve``'s parent process.

It renews the node's credential once ``ra.renew_fraction`` of its lifetime has elapsed
(the workers re-read the file, see ``credential.current``), and runs the other periodic
jobs it is given (``serve`` adds the ACME retrier: orders left processing while the
upstream was away) every ``ra.retry_interval_seconds``. It opens an appliance of its own
(the parent closes the one it started with before the workers fork). A failing job is
logged once per outage and tried again at the next period; nothing here can stop the
service.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from appliance import config, logs
from appliance.audit.log import Actor
from appliance.background import ParentThread
from appliance.ra import credential, node
from appliance.runtime import Appliance

log = logs.get("ra.jobs")
ACTOR = Actor("appliance:ra", "system")
Job = Callable[[Appliance], object]


class NodeJobs(ParentThread):
    name = "ra-jobs"

    def __init__(self, config_path: Path, jobs: list[tuple[str, Job]] | None = None) -> None:
        super().__init__()
        self.config_path = config_path
        self.jobs: list[tuple[str, Job]] = [("credential renewal", renew_if_due),
                                            *(jobs or [])]
        self._failing: set[str] = set()

    def _run(self) -> None:
        app: Appliance | None = None
        try:
            while not self._stop.is_set():
                try:
                    if app is None:
                        app = Appliance(config.load(self.config_path))
                    interval = app.settings.config.ra.retry_interval_seconds
                except Exception as exc:
                    log.warning("RA jobs cannot start yet", extra={"error": repr(exc)[:300]})
                    self._stop.wait(5.0)
                    continue
                for name, job in self.jobs:
                    self._once(app, name, job)
                self._stop.wait(interval)
        finally:
            if app is not None:
                app.close()

    def _once(self, app: Appliance, name: str, job: Job) -> None:
        try:
            job(app)
        except Exception as exc:
            if name not in self._failing:
                log.warning(f"RA job failed: {name}; retrying", extra={"error": repr(exc)[:300]})
            self._failing.add(name)
        else:
            if name in self._failing:
                log.info(f"RA job works again: {name}")
            self._failing.discard(name)


def renew_if_due(app: Appliance) -> bool:
    """Renew the credential when its renewal time has come; whether it was renewed."""
    leaf = credential.current(app).leaf
    due = credential.renewal_due(leaf, app.settings.config.ra.renew_fraction)
    if datetime.now(UTC) < due:
        return False
    renewed = node.renew_credential(app, ACTOR)
    log.info("RA credential renewed", extra={"serial": f"{renewed.serial_number:x}"})
    return True
