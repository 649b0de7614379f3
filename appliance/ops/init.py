"""``appliance init``: a new data directory on the embedded defaults.

Creates ``appliance.yaml``, an HSM profile, the SQLite database at the
current schema, and (for the SoftHSM profile) a fresh token whose PINs are
random and live only in ``secrets/`` (mode 0600, folder 0700). An existing,
non-empty directory is never touched.

The installation's mode (``--fips`` or the default) is written twice, in the same run: as
``fips.enabled`` in ``appliance.yaml`` and as the ``mode`` row of the database, audited with
the ``appliance.initialized`` event. The row is what every node is checked against
(:mod:`appliance.fips.mode`); an existing installation is never switched to FIPS mode in
place, since its keys were made outside the mode.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from appliance import config_doc, secretfile, strict_yaml
from appliance.audit.log import Actor
from appliance.config import CONFIG_NAME, ApplianceConfig, load
from appliance.errors import ConfigError
from appliance.fips import mode as fips_mode
from appliance.hsm import softhsm
from appliance.runtime import Appliance
from appliance.store import migrate

TOKEN_LABEL = "appliance"  # noqa: S105 - a token label, not a secret
HEADER = """Appliance configuration (made by `appliance init`): every setting, with its default
unless init was told otherwise. Relative paths are read against this file's folder.
Unknown keys are refused; `appliance config show` prints what is in force."""


def _write_secret(path: Path, value: str) -> None:
    secretfile.write_new(path, (value + "\n").encode())


def _refuse_fips_in_place(directory: Path) -> None:
    """``init --fips`` on an existing installation: say which one it is, change nothing."""
    try:
        already = load(directory / CONFIG_NAME).config.fips.enabled
    except ConfigError:
        already = False  # unreadable: whatever it is, it is not switched here
    if already:
        raise fips_mode.FipsModeIrreversible(
            f"{directory} already holds an installation in FIPS mode; init never touches an "
            "existing installation. Nothing was changed.")
    raise fips_mode.FipsModeIrreversible(
        f"{directory} already holds an installation ({CONFIG_NAME}); the FIPS mode is "
        "chosen when an installation is made and cannot be switched on in place (new keys "
        "are needed: its keys were made outside the mode). Nothing was changed. Make a new "
        "installation: appliance init --dir NEW_DIR --fips")


def init(directory: Path, actor: Actor, node_id: str = "node-1",
         database_url: str | None = None, *, token_label: str = TOKEN_LABEL,
         settings: dict[str, Any] | None = None, fips: bool = False) -> Path:
    """Create the data directory; returns the path of its configuration file.

    ``settings`` are configuration blocks written over the defaults (e.g. ``{"service":
    {"public_base_url": ...}}``), validated like the file itself before anything is made.
    ``fips``: the new installation is in FIPS mode, for good."""
    directory = directory.absolute()
    if fips and (directory / CONFIG_NAME).exists():
        _refuse_fips_in_place(directory)
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise ConfigError(f"{directory} already exists and is not empty; refusing to clobber it")
    config: dict[str, Any] = {
        "node_id": node_id,
        "database": {"url": database_url or "sqlite:///appliance.db"},
        "hsm": {"profile": "hsm.yaml"},
    }
    for block, values in (settings or {}).items():
        if isinstance(values, dict) and isinstance(config.get(block), dict):
            config[block] = {**config[block], **values}
        else:
            config[block] = values
    if fips:
        config["fips"] = {**(config.get("fips") or {}), "enabled": True}
    try:
        validated = ApplianceConfig.model_validate(config)
    except ValidationError as exc:
        raise ConfigError(f"invalid configuration: {strict_yaml.summarise(exc)}") from None
    created = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True, mode=0o750)
    try:
        secrets_dir = directory / "secrets"
        secrets_dir.mkdir(mode=0o700)
        so_pin, user_pin = softhsm.new_pin(), softhsm.new_pin()
        _write_secret(secrets_dir / "so.pin", so_pin)
        _write_secret(secrets_dir / "user.pin", user_pin)
        conf = softhsm.write_config(directory / "softhsm")
        module = softhsm.find_module()
        softhsm.init_token(conf, token_label, so_pin, user_pin, module)
        del so_pin, user_pin

        profile = {
            "name": "softhsm",
            "module": str(module),
            "token": {"label": token_label},
            "pin": {"file": "secrets/user.pin"},
            "pool_size": 4,
            "module_env": {"SOFTHSM2_CONF": "${profile_dir}/softhsm/softhsm2.conf"},
            "startup_lock": "softhsm/startup.lock",
        }
        (directory / "hsm.yaml").write_text(
            "# HSM profile of this data directory (SoftHSM v2, made by `appliance init`).\n"
            + yaml.safe_dump(profile, sort_keys=False), encoding="utf-8")
        path = directory / CONFIG_NAME
        path.write_text(config_doc.document(validated, HEADER), encoding="utf-8")

        app = Appliance(load(path))
        try:
            migrate.upgrade(app.db)
            mode = fips_mode.configured(app.settings)
            with app.db.transaction() as s:
                before = fips_mode.record_at_init(s, mode)
                app.audit_log().append(
                    s, "appliance.initialized", actor,
                    object_ids={"node_id": node_id, "token_label": token_label},
                    details={"data_dir": str(directory), "hsm_profile": "softhsm",
                             "schema": migrate.head(), "mode": mode,
                             "mode_recorded": "kept" if before is not None else "new"},
                )
        finally:
            app.close()
        return path
    except BaseException:
        if created:
            shutil.rmtree(directory, ignore_errors=True)
        else:
            for child in directory.iterdir():
                if child.is_dir():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink()
        raise
