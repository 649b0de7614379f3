"""Helpers for tests that run key ceremonies through the CLI against real SoftHSM data dirs.

Making an appliance (``init`` + audit key, or ``quickstart``) costs seconds, so
tests build one base data directory per kind and work on copies of it: a copy
is an independent appliance with its own SoftHSM token, once the absolute
``directories.tokendir`` line of its ``softhsm2.conf`` points at the copy.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import run_cli

REPO = Path(__file__).resolve().parent.parent
CEREMONIES = REPO / "ceremonies"


def clone_data_dir(src: Path, dst: Path) -> Path:
    """Copy a data directory (database, secrets, SoftHSM store) into ``dst``, a new path.

    The copy's token is a separate token: SoftHSM keeps each object in a file
    under ``directories.tokendir``, which is rewritten to the copy's own
    ``softhsm/tokens``. Every other path in a data directory is relative.
    """
    dst = dst.resolve()
    shutil.copytree(src, dst, symlinks=True)
    conf = dst / "softhsm" / "softhsm2.conf"
    lines = conf.read_text().splitlines()
    rewritten = [
        f"directories.tokendir = {dst / 'softhsm' / 'tokens'}"
        if line.strip().startswith("directories.tokendir") else line
        for line in lines
    ]
    if rewritten == lines:
        raise AssertionError(f"{conf} has no directories.tokendir line to rewrite")
    conf.write_text("\n".join(rewritten) + "\n")
    return dst


def cli(data_dir: Path, *args: str, input: str | None = None,
        check: bool = False) -> subprocess.CompletedProcess[str]:
    return run_cli("--dir", str(data_dir), *args, input=input, check=check)


def run_ceremony(data_dir: Path, script: Path, out: Path, *extra: str, input: str | None = None,
                 check: bool = False) -> subprocess.CompletedProcess[str]:
    return cli(data_dir, "ceremony", "run", str(script), "--out", str(out), *extra,
               input=input, check=check)


def write_script(path: Path, doc: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def openssl(*args: str, check: bool = True, input: bytes | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["openssl", *args], capture_output=True, input=input, cwd=cwd,
                          timeout=60, check=False)
    result = subprocess.CompletedProcess(proc.args, proc.returncode,
                                         proc.stdout.decode(errors="replace"),
                                         proc.stderr.decode(errors="replace"))
    if check and proc.returncode != 0:
        raise AssertionError(f"openssl {' '.join(args)} exited {proc.returncode}\n"
                             f"{result.stdout}\n{result.stderr}")
    return result


def cert_text(path: Path) -> str:
    return openssl("x509", "-in", str(path), "-noout", "-text").stdout


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def quickstart_record(data_dir: Path) -> Path:
    """The record folder ``appliance quickstart`` left in DIR/ceremonies/."""
    (record,) = [p for p in (data_dir / "ceremonies").iterdir() if p.name.endswith("-quickstart")]
    return record


# -- reading state directly (cheaper than a CLI process per check) -------------------------


def _db(data_dir: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(f"file:{data_dir / 'appliance.db'}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    return conn


def audit_events(data_dir: Path) -> list[dict[str, Any]]:
    with _db(data_dir) as conn:
        rows = conn.execute("SELECT seq, event_type, outcome, object_ids, details "
                            "FROM audit_events ORDER BY seq").fetchall()
    return [{"seq": r["seq"], "event_type": r["event_type"], "outcome": r["outcome"],
             "object_ids": json.loads(r["object_ids"]), "details": json.loads(r["details"]),
             "raw": r["object_ids"] + r["details"]} for r in rows]


def authorities(data_dir: Path) -> dict[str, dict[str, Any]]:
    with _db(data_dir) as conn:
        rows = conn.execute("SELECT a.name, a.kind, a.status, p.name AS parent "
                            "FROM authorities a LEFT JOIN authorities p "
                            "ON a.parent_id = p.id").fetchall()
    return {r["name"]: dict(r) for r in rows}


def key_labels(data_dir: Path) -> set[str]:
    with _db(data_dir) as conn:
        return {r[0] for r in conn.execute("SELECT label FROM hsm_keys")}


def token_objects(data_dir: Path) -> set[str]:
    """The SoftHSM object files of the data directory's token (one per key object)."""
    return {p.name for p in (data_dir / "softhsm" / "tokens").glob("*/*.object")}


def snapshot(data_dir: Path) -> dict[str, str]:
    """Every file of a data directory and its SHA-256."""
    return {str(p.relative_to(data_dir)): sha256_file(p)
            for p in sorted(data_dir.rglob("*")) if p.is_file()}
