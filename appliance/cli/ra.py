"""``appliance ra``: registration authorities (``ra init`` / ``ra import`` make an RA node)."""

from __future__ import annotations

import click

from appliance.cli.ra_init import import_cmd, init_cmd


@click.group("ra")
def ra() -> None:
    """Registration authorities: make an RA node, list the RAs this node knows."""


ra.add_command(init_cmd)
ra.add_command(import_cmd)
