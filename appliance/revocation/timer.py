"""The node's CRL timer: ``republish_due`` every ``revocation.crl_check_seconds``.

Why in ``serve`` as well as in systemd's ``appliance-crl.timer``: a node brought up by
hand (the README's set-up, a container) has no systemd timer, and its CRLs must still be
renewed on schedule and cover a revocation whose own republication failed. Several nodes
may each run it: a CRL is due on all of them at once, and the numbering (stored only as
the next number, overtaken publishers start over) keeps that correct; the cost is a
spare CRL now and then. The first check waits one period: start-up (the workers booting,
their self-tests) has the token and the database to itself."""

from __future__ import annotations

from pathlib import Path

from appliance import config, logs
from appliance.audit.log import Actor
from appliance.background import ParentThread
from appliance.revocation import crl
from appliance.runtime import Appliance

log = logs.get("revocation.timer")
ACTOR = Actor("appliance:crl-timer", "system")


class CrlTimer(ParentThread):
    name = "crl-timer"

    def __init__(self, config_path: Path) -> None:
        super().__init__()
        self.config_path = config_path
        self._failing = False

    def _run(self) -> None:
        app: Appliance | None = None
        try:
            period = config.load(self.config_path).config.revocation.crl_check_seconds
            if period <= 0:
                return
            while not self._stop.wait(period):
                try:
                    if app is None:
                        app = Appliance(config.load(self.config_path))
                    done = crl.republish_due(app, ACTOR)
                except Exception as exc:
                    if not self._failing:
                        log.warning("CRL timer: publishing the due CRLs failed; retrying "
                                    "next period", extra={"error": repr(exc)[:300]})
                    self._failing = True
                    continue
                if self._failing:
                    log.info("CRL timer works again")
                self._failing = False
                for p in done:
                    log.info("CRL timer published a CRL", extra={
                        "authority": p.authority, "crl_number": p.number,
                        "entries": p.entries})
        except Exception as exc:  # the configuration did not load: serve goes on without
            log.warning("CRL timer not started", extra={"error": repr(exc)[:300]})
        finally:
            if app is not None:
                app.close()
