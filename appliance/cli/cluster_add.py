"""``appliance cluster add-node``: a new node's data directory from an existing node's.

``add_node_cmd`` is held by the ``cluster`` group of ``appliance.cli.cluster``, beside
``status``.
"""

from __future__ import annotations

from pathlib import Path

import click

from appliance.cli.officers import operator_option
from appliance.ops import add_node as ops
from appliance.ops import fips as fips_ops
from appliance.runtime import Appliance


@click.command("add-node")
@click.option("--from", "source", required=True,
              type=click.Path(exists=True, path_type=Path), metavar="A_DIR",
              help="Data directory (or configuration file) of an existing node.")
@click.option("--dir", "target", required=True, type=click.Path(path_type=Path),
              metavar="B_DIR", help="The new node's data directory (new, or empty).")
@click.option("--node-id", required=True, help="The new node's name (its audit chain's).")
@click.option("--api-listen", default=None, metavar="HOST:PORT",
              help="The new node's HTTPS API listener (default: A's, if that is a wildcard "
                   "address such as 0.0.0.0:8443; needed otherwise).")
@click.option("--http-listen", default=None, metavar="HOST:PORT",
              help="The new node's OCSP/CRL listener (default as for --api-listen).")
@operator_option
def add_node_cmd(source: Path, target: Path, node_id: str, api_listen: str | None,
                 http_listen: str | None, operator_spec: str | None) -> None:
    """Make B_DIR a node of A's cluster: the same PostgreSQL database, token and shared
    secrets; its own node id, listeners, audit chain and TLS certificate."""
    app = Appliance(ops.source_settings(source))
    try:
        actor = fips_ops.require_operator(app, "cluster add-node", operator_spec)
        node = ops.add_node(app, target, node_id, actor, api_listen=api_listen,
                            http_listen=http_listen)
    finally:
        app.close()
    click.echo(f"node {node.node_id} made in {node.directory} (audited in node "
               f"{app.settings.node_id}'s chain as {ops.EVENT})")
    click.echo(f"  database       {node.database} (shared)")
    click.echo(f"  token          the same as {app.settings.node_id}'s "
               f"({node.directory / ops.PROFILE_NAME})")
    click.echo(f"  listeners      API {node.api_listen}, public {node.http_listen}")
    click.echo(f"  secrets copied {', '.join(node.secrets_copied)} (mode 0600)")
    if node.secrets_left:
        click.echo(f"  not copied     {', '.join(node.secrets_left)} (people's and clients' "
                   "credentials, the SO PIN: a node does not need them)")
    click.echo(f"next: appliance --dir {node.directory} serve")
