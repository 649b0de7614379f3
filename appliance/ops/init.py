"""``appliance init``: a new data directory on the embedded defaults.

Creates ``appliance.yaml``, an HSM profile, the SQLite database at the
current schema, and (for the SoftHSM profile) a fresh token whose PINs are
random and live only in ``secrets/`` (mode 0600, folder 0700). An existing,
non-empty directory is never touched.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import yaml

from appliance import secretfile
from appliance.audit.log import Actor
from appliance.config import CONFIG_NAME, load
from appliance.errors import ConfigError
from appliance.hsm import softhsm
from appliance.runtime import Appliance
from appliance.store import migrate

TOKEN_LABEL = "appliance"  # noqa: S105 - a token label, not a secret


def _write_secret(path: Path, value: str) -> None:
    secretfile.write_new(path, (value + "\n").encode())


def init(directory: Path, actor: Actor, node_id: str = "node-1",
         database_url: str | None = None, *, token_label: str = TOKEN_LABEL,
         settings: dict[str, Any] | None = None) -> Path:
    """Create the data directory; returns the path of its configuration file.

    ``settings`` are configuration blocks written over the defaults (e.g. ``{"service":
    {"public_base_url": ...}}``), validated like the file itself before anything is made."""
    directory = directory.absolute()
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise ConfigError(f"{directory} already exists and is not empty; refusing to clobber it")
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
        config: dict[str, Any] = {
            "node_id": node_id,
            "database": {"url": database_url or "sqlite:///appliance.db"},
            "hsm": {"profile": "hsm.yaml"},
            "audit": {"key_label": "audit-key", "checkpoint_every": 100,
                      "checkpoint_interval_seconds": 300,
                      "anchor_file": "audit-anchors.jsonl"},
            "logging": {"level": "INFO"},
        }
        for block, values in (settings or {}).items():
            if isinstance(values, dict) and isinstance(config.get(block), dict):
                config[block] = {**config[block], **values}
            else:
                config[block] = values
        path = directory / CONFIG_NAME
        path.write_text(
            "# Appliance configuration (made by `appliance init`). Relative paths are\n"
            "# read against this file's folder.\n" + yaml.safe_dump(config, sort_keys=False),
            encoding="utf-8")

        app = Appliance(load(path))
        try:
            migrate.upgrade(app.db)
            with app.db.transaction() as s:
                app.audit_log().append(
                    s, "appliance.initialized", actor,
                    object_ids={"node_id": node_id, "token_label": token_label},
                    details={"data_dir": str(directory), "hsm_profile": "softhsm",
                             "schema": migrate.head()},
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
