"""``appliance quickstart``: a working CA on the embedded defaults in one command."""

from __future__ import annotations

from pathlib import Path

import click

from appliance import config
from appliance.cli.ceremony import run_ceremony
from appliance.cli.context import CliContext, location_options, pass_ctx
from appliance.ops import keys as key_ops
from appliance.ops import provisioners as prov_ops
from appliance.ops.init import init
from appliance.provisioners.settings import ProvisionerSettings
from appliance.runtime import Appliance, cli_actor

QUICKSTART = Path(__file__).resolve().parent.parent / "ceremony" / "quickstart.yaml"


@click.command("quickstart")
@click.option("--script", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=QUICKSTART, show_default=False,
              help="Ceremony to run instead of the built-in quickstart.yaml.")
@location_options
@pass_ctx
def quickstart_cmd(ctx: CliContext, script: Path) -> None:
    """init + audit key + quickstart ceremony (P-256 root, issuing CA, OCSP signer)."""
    if ctx.data_dir is None:
        raise click.UsageError("quickstart needs --dir DIR")
    actor = cli_actor()
    path = init(Path(ctx.data_dir), actor)
    click.echo(f"initialised {path.parent}")
    app = Appliance(config.load(path))
    try:
        info = key_ops.generate(app, app.settings.config.audit.key_label, "ec-p256", actor)
        click.echo(f"audit key {info.label!r} generated ({info.spki_sha256[:16]}...)")
        run_ceremony(app, script, None)
        if script == QUICKSTART:
            prov_ops.add(app, "admin", "jwk", ProvisionerSettings(), actor)
            click.echo(f"provisioner 'admin' (jwk) added; token-signing key "
                       f"{prov_ops.key_path(app, 'admin')}")
            prov_ops.add(app, "acme", "acme", ProvisionerSettings(), actor)
            with app.db.sessions() as db:
                directory = prov_ops.describe(app, db, prov_ops.get(db, "acme"))["directory"]
            click.echo(f"provisioner 'acme' (acme, EAB not required): {directory}")
    finally:
        app.close()
