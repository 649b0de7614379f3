#!/usr/bin/env python3
"""What an anchored checkpoint costs: at every commit against the default, in one run.

On a throw-away SoftHSM token (an EC P-256 audit key) and a throw-away SQLite
database, each configuration appends ``--records`` audit records, one per
transaction (commit), as the service does:

* ``none``     no checkpoints (``checkpoint_every: 0``): the baseline;
* ``default``  a checkpoint every 100 records (the default), anchored;
* ``every``    a checkpoint at every commit (``checkpoint_every: 1``), anchored
  (token data object + anchor file; syslog off, as it depends on the host);
* ``every-unanchored`` the same checkpoints without anchors: what the
  signature alone costs, so the anchor's own share shows.

The configurations take turns over ``--rounds`` rounds (each on a fresh node
id, so every one starts from an empty chain) and the medians are printed:
records/s, and ms per checkpoint = (time - baseline time) / checkpoints. Then
the parts of one anchored checkpoint on their own: one token signature, one
token object replace, one anchor file append (fsync'd). It prints numbers and
asserts none.

    .venv/bin/python bench/audit_anchor.py [--records 300] [--rounds 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

CONFIGS = {
    "none": {"every": 0, "anchored": False},
    "default": {"every": 100, "anchored": True},
    "every": {"every": 1, "anchored": True},
    "every-unanchored": {"every": 1, "anchored": False},
}
TOKEN_LABEL = "bench-audit"
KEY_LABEL = "bench-audit-key"


def make_pool(directory: Path) -> Any:
    from appliance.hsm import softhsm
    from appliance.hsm.pool import SessionPool
    from appliance.hsm.profile import HsmProfile

    conf = softhsm.write_config(directory / "softhsm")
    so_pin, user_pin = softhsm.new_pin(), softhsm.new_pin()
    softhsm.init_token(conf, TOKEN_LABEL, so_pin, user_pin)
    pin_file = directory / "user.pin"
    fd = os.open(pin_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(user_pin + "\n")
    del so_pin, user_pin
    os.environ["SOFTHSM2_CONF"] = str(conf)
    return SessionPool(HsmProfile.model_validate({
        "name": "bench-softhsm", "module": str(softhsm.find_module()),
        "token": {"label": TOKEN_LABEL}, "pin": {"file": str(pin_file)}, "pool_size": 2,
        "module_env": {"SOFTHSM2_CONF": str(conf)},
    }))


def run_config(name: str, db: Any, signer: Any, pool: Any, anchor_file: Path, node: str,
               records: int) -> dict[str, float]:
    from sqlalchemy import func, select

    from appliance.audit.anchor import AnchorWriter
    from appliance.audit.log import Actor, AuditLog
    from appliance.store.models import AuditCheckpoint

    cfg = CONFIGS[name]
    anchors = AnchorWriter(pool, anchor_file, syslog=False) if cfg["anchored"] else None
    # the baseline has the signer too (checkpoint_every 0): the per-record "is one due?"
    # query is then in every configuration, and the difference is the checkpoints alone
    log = AuditLog(node, signer, int(cfg["every"]), 0, anchors)
    actor = Actor("bench", "operator")
    t0 = time.perf_counter()
    for i in range(records):
        with db.transaction() as s:
            log.append(s, "bench.event", actor, object_ids={"i": i}, details={"n": i})
    elapsed = time.perf_counter() - t0
    with db.transaction() as s:
        cps = s.scalar(select(func.count()).select_from(AuditCheckpoint)
                       .where(AuditCheckpoint.node_id == node)) or 0
    return {"seconds": elapsed, "checkpoints": float(cps)}


def parts(pool: Any, signer: Any, anchor_file: Path, n: int) -> dict[str, float]:
    """ms for each part of one anchored checkpoint, on its own (median of n)."""
    from appliance.audit.anchor import append_line
    from appliance.hsm import dataobj

    def median_ms(fn: Any) -> float:
        times = []
        for i in range(n):
            t0 = time.perf_counter()
            fn(i)
            times.append((time.perf_counter() - t0) * 1000)
        return statistics.median(times)

    line = '{"bench": "' + "x" * 400 + '"}'
    return {
        "token_signature_ms": median_ms(lambda i: signer.sign(f"payload {i}".encode())),
        "token_object_replace_ms": median_ms(
            lambda i: dataobj.replace(pool, "audit-anchor-bench-parts", line.encode())),
        "file_append_fsync_ms": median_ms(lambda i: append_line(anchor_file, line)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from appliance.audit.signer import CheckpointSigner
    from appliance.hsm.keys import generate_keypair
    from appliance.hsm.signer import token_private_key
    from appliance.store import migrate
    from appliance.store.db import Database

    with tempfile.TemporaryDirectory(prefix="bench-audit-") as tmp:
        d = Path(tmp)
        pool = make_pool(d)
        signer = CheckpointSigner(token_private_key(pool, generate_keypair(pool, KEY_LABEL,
                                                                           "ec-p256")))
        db = Database(f"sqlite:///{d / 'bench.db'}")
        migrate.upgrade(db)
        anchor_file = d / "anchors.jsonl"
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in CONFIGS}
        for r in range(args.rounds):
            order = list(CONFIGS) if r % 2 == 0 else list(reversed(CONFIGS))
            for name in order:
                runs[name].append(run_config(name, db, signer, pool, anchor_file,
                                             f"bench-{name}-{r}", args.records))
        part = parts(pool, signer, d / "parts.jsonl", 50)
        db.dispose()
        pool.close()

    base = statistics.median(x["seconds"] for x in runs["none"])
    result: dict[str, Any] = {"records_per_config": args.records, "rounds": args.rounds,
                              "configs": {}, "parts": part}
    for name, xs in runs.items():
        secs = statistics.median(x["seconds"] for x in xs)
        cps = statistics.median(x["checkpoints"] for x in xs)
        result["configs"][name] = {
            "records_per_s": args.records / secs,
            "checkpoints": cps,
            "ms_per_checkpoint": ((secs - base) * 1000 / cps) if cps else None,
            "ms_per_record": secs * 1000 / args.records,
        }
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return
    print(f"{args.records} records per configuration, one commit each, median of "
          f"{args.rounds} rounds (SQLite, SoftHSM, EC P-256 audit key)")
    print(f"{'configuration':<18} {'records/s':>10} {'ms/record':>10} {'checkpoints':>12} "
          f"{'ms/checkpoint':>14}")
    for name, c in result["configs"].items():
        per_cp = f"{c['ms_per_checkpoint']:.2f}" if c["ms_per_checkpoint"] is not None else "-"
        print(f"{name:<18} {c['records_per_s']:>10.0f} {c['ms_per_record']:>10.2f} "
              f"{c['checkpoints']:>12.0f} {per_cp:>14}")
    print("parts of one anchored checkpoint, alone (median of 50): "
          + ", ".join(f"{k} {v:.2f}" for k, v in part.items()))


if __name__ == "__main__":
    main()
