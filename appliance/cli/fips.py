"""``appliance fips``: the FIPS-style mode of this installation."""

from __future__ import annotations

import click

from appliance.cli.context import CliContext, emit_json, location_options, pass_ctx


@click.group("fips")
def fips() -> None:
    """The FIPS-style mode: self-tests, the sealed manifest, status and the auditor's report."""


@fips.command("selftest")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@location_options
@pass_ctx
def selftest_cmd(ctx: CliContext, as_json: bool) -> None:
    """Run the power-on self-tests now (audited, recorded for this node); exit 1 on a failure.

    A failure also stops this node's running service: its workers read the newest run of
    their node and answer 503 fips_error until restarted with passing tests."""
    from appliance.errors import ConfigError
    from appliance.fips import selftest

    app = ctx.app()
    if not app.settings.config.fips.enabled:
        raise ConfigError("this installation is not in FIPS mode (fips.enabled is false)")
    result = selftest.on_demand(app)
    if as_json:
        emit_json({"passed": result.passed, "manifest_sha256": result.manifest_sha256,
                   "tests": [{"name": c.name, "ok": c.ok, "detail": c.detail}
                             for c in result.checks],
                   "differences": result.differences})
    else:
        for c in result.checks:
            suffix = f"  {c.detail}" if c.detail else ""
            click.echo(f"{'PASS' if c.ok else 'FAIL'}  {c.name}{suffix}")
        for d in result.differences[:20]:
            click.echo(f"      {d}")
        click.echo(f"manifest sha256 {result.manifest_sha256}")
        click.echo("self-tests passed" if result.passed else
                   f"self-tests FAILED: {', '.join(result.failed)}", err=not result.passed)
    ctx.close()
    raise SystemExit(0 if result.passed else 1)
