"""``appliance ra``: the registration authorities below this node.

``ra list`` is read-only (no operator needed). ``ra init`` and ``ra import``, which make an
RA node, are added to this group by ``appliance.cli.ra_init``; registering an RA is
``provisioner add NAME --type ra --csr F`` and cutting one off ``provisioner update NAME
--disable``.
"""

from __future__ import annotations

import click

from appliance.cli.context import CliContext, emit_json, location_options, pass_ctx, table
from appliance.ops import ra as ra_ops


@click.group("ra")
def ra() -> None:
    """Registration authorities: the RAs registered at this node (and their state)."""


@ra.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@location_options
@pass_ctx
def list_cmd(ctx: CliContext, as_json: bool) -> None:
    """Every RA registered here: its parent (the RA it was registered through, '-' for one
    reporting here directly), state (enabled, disabled, expired, revoked), current
    credential serial and notAfter, and its last contact."""
    rows = ra_ops.list_ras(ctx.app())
    if as_json:
        emit_json(rows)
        return
    shown = [{**r, "credential not after": _when(r["credential_not_after"]),
              "last contact": (_when(r["last_contact"])
                               + (f" ({r['last_op']})" if r["last_op"] else ""))
              if r["last_contact"] else None,
              "credential serial": r["credential_serial"]} for r in rows]
    table(shown, ["name", "parent", "state", "credential serial", "credential not after",
                  "last contact"])


def _when(value: str | None) -> str:
    return "-" if value is None else value[:19].replace("T", " ") + "Z"
