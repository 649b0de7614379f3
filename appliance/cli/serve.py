"""``appliance serve``: the HTTPS API and the plain-HTTP listener, each its own process group.

The API is :mod:`appliance.web.api_server` (an event loop per worker reads whole
requests, TLS included, before a thread runs them); the relying-party listener is
:mod:`appliance.web.prefork` or one of its gunicorn alternatives. Two groups because the
relying-party listener (CRLs, OCSP) must keep answering whatever the API is doing. If
either group dies, the other is stopped and serve exits non-zero, so a supervisor
(systemd) restarts the whole appliance. SIGHUP is passed on: each group starts new
workers and retires the old ones. A thread in this parent writes the node's heartbeat
(:mod:`appliance.cluster.heartbeat`) and marks it stopped after a clean stop.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

import click

from appliance import config
from appliance.acme.finalize import retry_pending_orders
from appliance.audit.log import Actor
from appliance.cli.context import CliContext, location_options, pass_ctx
from appliance.cluster.heartbeat import Heartbeat
from appliance.config import ServiceConfig
from appliance.errors import ConfigError
from appliance.hsm import selftest
from appliance.ops import offline_root, schema
from appliance.ops import provisioners as prov_ops
from appliance.ra import credential
from appliance.ra.jobs import NodeJobs
from appliance.ra.node import Forwarder
from appliance.revocation.timer import CrlTimer
from appliance.runtime import Appliance
from appliance.web import tls


def gunicorn_command(entry: str, bind: str, workers: int, threads: int, timeout: int,
                     tls_files: tls.TlsFiles | None, worker_class: str = "gthread") -> list[str]:
    cmd = [sys.executable, "-m", "gunicorn", "--bind", bind, "--workers", str(workers),
           "--threads", str(threads), "--worker-class", worker_class, "--timeout", str(timeout),
           "--graceful-timeout", "10", "--keep-alive", "5", "--limit-request-line", "8190",
           "--limit-request-fields", "100", "--limit-request-field_size", "8190",
           "--log-level", "warning", "--no-control-socket"]
    if tls_files is not None:
        cmd += ["--certfile", str(tls_files.certificate), "--keyfile", str(tls_files.key),
                "--ca-certs", str(tls_files.roots), "--cert-reqs", "1"]
    return [*cmd, entry]


def api_command(svc: ServiceConfig, files: tls.TlsFiles) -> list[str]:
    return [sys.executable, "-m", "appliance.web.api_server", "--bind", svc.api_listen,
            "--workers", str(svc.workers), "--threads", str(svc.threads),
            "--certfile", str(files.certificate), "--keyfile", str(files.key),
            "--ca-certs", str(files.roots), "--graceful-timeout", "10"]


def public_command(svc: ServiceConfig) -> list[str]:
    """The plain-HTTP group: the appliance's own HTTP/1.1 server (``httptools``, see
    :mod:`appliance.web.prefork`), ASGI under gunicorn's uvicorn worker, or the WSGI app
    under gthread; all keep connections alive (OCSP clients and CDNs reuse them)."""
    if svc.http_server == "httptools":
        return [sys.executable, "-m", "appliance.web.prefork", "--bind", svc.http_listen,
                "--workers", str(svc.http_workers), "--threads", str(svc.http_threads),
                "--timeout", str(svc.timeout_seconds), "--keep-alive", "5",
                "--graceful-timeout", "10"]
    if svc.http_server == "uvicorn":
        return gunicorn_command("appliance.web.wsgi:public_asgi()", svc.http_listen,
                                svc.http_workers, 1, svc.timeout_seconds, None,
                                "uvicorn_worker.UvicornWorker")
    return gunicorn_command("appliance.web.wsgi:public_app()", svc.http_listen,
                            svc.http_workers, svc.http_threads, svc.timeout_seconds, None)


def _acme_retrier() -> Callable[[Appliance], int]:
    """The RA node's ACME retrier, with one forwarder (one upstream client) kept."""
    kept: dict[int, Forwarder] = {}

    def run(app: Appliance) -> int:
        forwarder = kept.get(id(app)) or kept.setdefault(id(app), Forwarder(app))
        return retry_pending_orders(app, forwarder)

    return run


@click.command("serve")
@click.option("--only", type=click.Choice(["api", "public"]), default=None,
              help="Run one listener only (e.g. one systemd unit each): 'api' (HTTPS) or "
                   "'public' (OCSP, CRLs, CA certificates over HTTP).")
@location_options
@pass_ctx
def serve_cmd(ctx: CliContext, only: str | None) -> None:
    """Serve the API (HTTPS) and OCSP/CRLs/CA certificates (HTTP) until stopped."""
    app = ctx.app()
    svc = app.settings.config.service
    # Before anything is started or changed: a node whose file says another mode than the
    # one the installation was made in does not serve (appliance.fips.mode).
    fips_on = app.require_mode() == "fips"
    if fips_on:
        click.echo("FIPS mode: approved algorithms only", err=True)
    schema.upgrade(app, Actor("appliance:serve", "system"))
    offline_root.require_offline(app)
    is_ra = app.settings.config.role == "ra"
    if is_ra:
        # Before any listener: an RA node without its credential cannot forward anything.
        credential.require_usable(app)
    for warning in ([] if is_ra else tls.stale_ca_urls(app)):
        click.echo(f"warning: {warning}", err=True)
    for name in prov_ops.plaintext_keys(app):
        click.echo(f"warning: the token-signing key of provisioner {name!r} is a plaintext file "
                   f"in secrets/: seal it (`appliance provisioner seal {name}`)", err=True)
    if app.settings.config.fips.enabled:
        app.signing_pool()  # the FIPS power-on self-tests: a failure refuses the start
    else:
        selftest.require(app.pool)
    files = tls.issue_api_certificate(app) if only != "public" else None
    config_path = str(app.settings.path)
    database_url = app.settings.database_url
    app.close()  # nothing token- or database-bound crosses into the workers
    env = dict(os.environ, APPLIANCE_CONFIG=config_path)
    env.pop("SOFTHSM2_CONF", None)
    groups = []
    if only != "public":
        assert files is not None
        groups.append(subprocess.Popen(api_command(svc, files), env=env))
        click.echo(f"serving the API on https://{svc.api_listen}", err=True)
    if only != "api":
        # OCSP, CRLs, CA certificates: the OCSP responder is dispatched first in this app.
        groups.append(subprocess.Popen(public_command(svc), env=env))
        click.echo(f"serving OCSP/CRLs/CA certificates on http://{svc.http_listen}", err=True)

    # This node's row in cluster_nodes (`appliance cluster status`), beaten from here.
    heartbeat = Heartbeat(Path(config_path), only=only)
    heartbeat.start()
    # CRLs due (missing, old, or behind a revocation) published every crl_check_seconds:
    # by the API unit when the listeners run as two units, not by an RA (it holds no CA key).
    crl_timer = CrlTimer(Path(config_path)) if not is_ra and only != "public" else None
    if crl_timer is not None:
        crl_timer.start()
    jobs = None
    if is_ra and only != "public":
        # ONE per node: credential renewal and the ACME retrier, in this parent process.
        jobs = NodeJobs(Path(config_path), [("acme retry", _acme_retrier())])
        jobs.start()

    def stop(_sig: int, _frame: FrameType | None) -> None:
        if jobs is not None:
            jobs.request_stop()
        if crl_timer is not None:
            crl_timer.request_stop()
        for p in groups:
            if p.poll() is None:
                p.terminate()

    def reload(_sig: int, _frame: FrameType | None) -> None:
        # New workers that cannot load the configuration would stop the whole group (the
        # old ones are already retiring): a configuration that does not load is refused here.
        try:
            fresh = config.load(Path(config_path))
        except ConfigError as exc:
            click.echo(f"reload refused, still serving with the running configuration: {exc}",
                       err=True)
            return
        if fresh.database_url != database_url:
            # The schema was brought up to date at start, on this database only.
            click.echo("reload refused, still serving with the running configuration: "
                       "database.url changed; a new database takes a restart (`appliance "
                       "serve` upgrades its schema first)", err=True)
            return
        if fresh.config.fips.enabled != fips_on:
            # The mode was checked at start; new workers must not come up in another one.
            click.echo("reload refused, still serving with the running configuration: "
                       f"fips.enabled is now {str(fresh.config.fips.enabled).lower()}, but "
                       f"this installation is in {'FIPS' if fips_on else 'the default'} mode "
                       "(the mode cannot change)", err=True)
            return
        for p in groups:  # each group starts new workers and retires the old ones
            if p.poll() is None:
                p.send_signal(signal.SIGHUP)
        click.echo("reloading: new workers with the configuration as it is now", err=True)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, reload)
    code = 0
    while all(p.poll() is None for p in groups):
        time.sleep(0.2)
    stop(signal.SIGTERM, None)
    if jobs is not None:
        jobs.stop()
    if crl_timer is not None:
        crl_timer.stop()
    for p in groups:
        try:
            rc = p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            p.kill()
            rc = p.wait()
        code = code or (rc if rc not in (0, -signal.SIGTERM) else 0)
    heartbeat.stop()  # the listeners are gone: the row says stopped
    raise SystemExit(code)
