"""Create SoftHSM v2 tokens for development, tests and the embedded default.

``softhsm2-util --init-token`` takes PINs on its command line (visible in
``ps``) or from a terminal, so tokens are initialised through the PKCS#11
API itself (``C_InitToken`` / ``C_InitPIN``) in a child process that reads
the PINs from its standard input. A child process, because SoftHSM reads its
configuration at ``C_Initialize`` and this process may already hold the
module.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

from appliance.errors import HsmError

SOFTHSM_MODULE_CANDIDATES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
)


def find_module() -> Path:
    for candidate in SOFTHSM_MODULE_CANDIDATES:
        if Path(candidate).exists():
            return Path(candidate)
    raise HsmError("SoftHSM v2 is not installed (apt-get install softhsm2)")


def write_config(directory: Path) -> Path:
    """A softhsm2.conf whose token store is ``directory/tokens``; returns its path."""
    tokens = directory / "tokens"
    tokens.mkdir(parents=True, exist_ok=True, mode=0o700)
    conf = directory / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n"
        "slots.removable = false\n",
        encoding="utf-8",
    )
    return conf


def new_pin() -> str:
    """A random PIN (24 URL-safe characters, about 143 bits)."""
    return secrets.token_urlsafe(18)


def init_token(conf: Path, label: str, so_pin: str, user_pin: str,
               module: Path | None = None) -> None:
    """Initialise a fresh token ``label`` in the SoftHSM store configured by ``conf``."""
    payload = json.dumps({
        "module": str(module or find_module()), "label": label,
        "so_pin": so_pin, "user_pin": user_pin,
    })
    env = dict(os.environ, SOFTHSM2_CONF=str(conf))
    proc = subprocess.run(
        [sys.executable, "-m", "appliance.hsm._softhsm_init"],
        input=payload, capture_output=True, text=True, env=env, timeout=60, check=False,
    )
    if proc.returncode != 0:
        raise HsmError(f"SoftHSM token initialisation failed: {proc.stderr.strip()[-500:]}")
