"""``appliance ocsp ...``: the OCSP pre-signer."""

from __future__ import annotations

import click

from appliance.cli.context import (
    CliContext,
    emit_json,
    location_options,
    make_progress,
    pass_ctx,
    progress_option,
)
from appliance.cli.officers import operator_option
from appliance.ocsp import presign as presigner
from appliance.ops import fips as fips_ops


@click.group("ocsp")
def ocsp() -> None:
    """OCSP responses: pre-signing (the responder runs under ``appliance serve``)."""


@ocsp.command("presign")
@click.option("--stale", "mode", flag_value="stale", default=True,
              help="Only responses that are missing, due for refresh or out of step with the "
                   "certificate's status (default).")
@click.option("--all", "mode", flag_value="all",
              help="Every issued or revoked certificate that has not expired.")
@click.option("--batch", type=click.IntRange(1, 10_000), default=presigner.BATCH,
              show_default=True, help="Responses stored per database transaction.")
@click.option("--processes", type=click.IntRange(1, 64), default=None,
              help="Signing processes for large batches (default: ocsp.presign_processes).")
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON.")
@progress_option
@operator_option
@location_options
@pass_ctx
def presign_cmd(ctx: CliContext, mode: str, batch: int, processes: int | None,
                as_json: bool, progress: bool | None, operator_spec: str | None) -> None:
    """Sign OCSP responses ahead of time, oldest first; one failure never stops the batch.

    How many are done (and the rate) is reported on stderr when it is a terminal (or with
    --progress); a summary line (or --json) ends the output."""
    actor = fips_ops.require_operator(ctx.app(), "ocsp presign", operator_spec)
    app = ctx.app()
    report = make_progress(progress)
    try:
        result = presigner.presign(
            app, stale_only=mode == "stale", batch=batch, processes=processes,
            actor=actor, progress=lambda done, total: report.count(mode, done, total))
    finally:
        report.close()
    if as_json:
        emit_json(result.as_dict())
    else:
        click.echo(f"{mode}: {result.candidates} candidates, {result.signed} signed, "
                   f"{result.failed} failed, {result.skipped} skipped, "
                   f"{result.not_attempted} not attempted in {result.seconds:.2f}s "
                   f"({result.rate:.0f}/s, {result.processes} process"
                   f"{'es' if result.processes > 1 else ''})")
    if result.failed or result.not_attempted:
        raise SystemExit(1)
