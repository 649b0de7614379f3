"""``appliance policy``: name policies of the authority and of provisioners."""

from __future__ import annotations

from pathlib import Path

import click

# Aliased: this module's click group is called ``policy``.
from appliance import policy as name_policy
from appliance.cli.context import CliContext, emit_json, location_options, pass_ctx
from appliance.cli.officers import operator_option
from appliance.ops import fips as fips_ops
from appliance.ops import policies


def _target(authority: bool, provisioner: str | None) -> tuple[str, str | None]:
    if authority == (provisioner is not None):
        raise click.UsageError("give exactly one of --authority or --provisioner NAME")
    return ("authority", None) if authority else ("provisioner", provisioner)


@click.group()
def policy() -> None:
    """Name policies (allow/deny of DNS names, IPs, emails, URIs, common names)."""


@policy.command("set")
@click.option("--authority", is_flag=True, help="The authority-wide policy.")
@click.option("--provisioner", default=None, help="The policy of this provisioner.")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@operator_option
@location_options
@pass_ctx
def set_cmd(ctx: CliContext, authority: bool, provisioner: str | None, file: Path,
            operator_spec: str | None) -> None:
    actor = fips_ops.require_operator(ctx.app(), "policy set", operator_spec)
    level, name = _target(authority, provisioner)
    set_to = policies.set_policy(ctx.app(), level, name, file.read_text(encoding="utf-8"),
                                 actor)
    click.echo(f"policy set for {name or 'the authority'}")
    notice = name_policy.wildcard_notice(set_to, level)
    if notice:
        click.echo(f"note: {notice}", err=True)


@policy.command("show")
@click.option("--authority", is_flag=True)
@click.option("--provisioner", default=None)
@click.option("--json", "as_json", is_flag=True)
@location_options
@pass_ctx
def show_cmd(ctx: CliContext, authority: bool, provisioner: str | None, as_json: bool) -> None:
    level, name = _target(authority, provisioner)
    p = policies.get_policy(ctx.app(), level, name)
    if as_json:
        emit_json(p.model_dump(mode="json"))
    else:
        click.echo(p.to_yaml(), nl=False)


@policy.command("remove")
@click.option("--authority", is_flag=True)
@click.option("--provisioner", default=None)
@operator_option
@location_options
@pass_ctx
def remove_cmd(ctx: CliContext, authority: bool, provisioner: str | None,
               operator_spec: str | None) -> None:
    actor = fips_ops.require_operator(ctx.app(), "policy remove", operator_spec)
    level, name = _target(authority, provisioner)
    policies.remove_policy(ctx.app(), level, name, actor)
    click.echo(f"policy removed from {name or 'the authority'}")
