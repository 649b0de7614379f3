"""The audit log against an attacker who has the database file: 19 tampers, anchors, export.

One real data directory (SQLite database, SoftHSM token with the audit key, the
anchor file) is made once for the module; every case works on a copy of it
(its own token too), drops the append-only triggers as an attacker with the
file would, rewrites rows with SQL, and runs ``appliance audit verify`` as an
auditor would. Checkpoints are signed and anchored by ``appliance audit
checkpoint`` (token object, anchor file); the records between are written with
the appliance's own ``AuditLog`` straight into the base database.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from appliance import config
from appliance.audit.log import Actor, AuditLog
from appliance.audit.record import GENESIS, HASHED_FIELDS, canonical, record_hash
from appliance.hsm import softhsm
from appliance.store.db import Database
from tests.ceremony_helpers import cli, clone_data_dir
from tests.conftest import run_cli

NODE, OTHER = "node-1", "node-2"
TRIGGERS = ("audit_events_no_update", "audit_events_no_delete",
            "audit_checkpoints_no_update", "audit_checkpoints_no_delete")


@dataclass(frozen=True)
class Base:
    path: Path
    cp1: int  # the older checkpoint's record
    cp2: int  # the newest checkpoint's record
    head: int


def _append(d: Path, node: str, n: int, start: int) -> None:
    settings = config.load(d / "appliance.yaml")
    db = Database(settings.database_url)
    try:
        log = AuditLog(node)
        with db.transaction() as s:
            for i in range(start, start + n):
                log.append(s, "test.event", Actor("alice", "operator"),
                           object_ids={"i": i}, details={"n": i, "note": f"événement {i}"})
    finally:
        db.dispose()


def _checkpoint(d: Path) -> int:
    out = cli(d, "audit", "checkpoint", check=True).stdout
    return int(out.split("checkpoint at record ")[1].split()[0])


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Base:
    d = tmp_path_factory.mktemp("anchors") / "data"
    run_cli("init", "--dir", str(d), check=True)
    cli(d, "hsm", "genkey", "--label", "audit-key", "--type", "ec-p256", check=True)
    _append(d, NODE, 20, 0)
    cp1 = _checkpoint(d)
    _append(d, NODE, 10, 100)
    cp2 = _checkpoint(d)
    _append(d, NODE, 5, 200)
    _append(d, OTHER, 5, 300)
    # closing(): sqlite3's own "with" only commits; a connection left open and closed by the
    # garbage collector during a later copy removed the -shm file under copytree.
    with closing(sqlite3.connect(d / "appliance.db")) as conn:
        (head,) = conn.execute("SELECT seq FROM audit_heads WHERE node_id = ?", (NODE,)).fetchone()
    return Base(d, cp1, cp2, head)


_counter = iter(range(1_000_000))


@pytest.fixture
def copy(base: Base, tmp_path: Path) -> Path:
    return clone_data_dir(base.path, tmp_path / f"copy{next(_counter)}")


# -- what an attacker with the file does -------------------------------------------------


def _open(d: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(d / "appliance.db")
    conn.row_factory = sqlite3.Row
    for trigger in TRIGGERS:
        conn.execute(f"DROP TRIGGER IF EXISTS {trigger}")
    return conn


def _rows(conn: sqlite3.Connection, node: str = NODE) -> list[dict[str, Any]]:
    return [dict(r) for r in conn.execute(
        "SELECT * FROM audit_events WHERE node_id = ? ORDER BY seq", (node,))]


def _set_head(conn: sqlite3.Connection, node: str = NODE) -> None:
    last = conn.execute("SELECT seq, hash FROM audit_events WHERE node_id = ? ORDER BY seq DESC "
                        "LIMIT 1", (node,)).fetchone()
    conn.execute("UPDATE audit_heads SET seq = ?, hash = ? WHERE node_id = ?",
                 (last["seq"], last["hash"], node))


def _rechain(conn: sqlite3.Connection, node: str = NODE) -> None:
    """Re-hash and re-link every record and fix the head: the chain alone then looks fine."""
    prev = GENESIS
    for row in _rows(conn, node):
        row["prev_hash"] = prev
        digest = record_hash({k: row[k] for k in HASHED_FIELDS})
        conn.execute("UPDATE audit_events SET prev_hash = ?, hash = ? WHERE id = ?",
                     (prev, digest, row["id"]))
        prev = digest
    _set_head(conn, node)


def _renumber(conn: sqlite3.Connection, node: str = NODE) -> None:
    rows = _rows(conn, node)
    conn.execute("UPDATE audit_events SET seq = -seq WHERE node_id = ?", (node,))
    for n, row in enumerate(rows, 1):
        conn.execute("UPDATE audit_events SET seq = ? WHERE id = ?", (n, row["id"]))


def _edit(conn: sqlite3.Connection, seq: int = 5) -> None:
    conn.execute("UPDATE audit_events SET actor = 'mallory' WHERE node_id = ? AND seq = ?",
                 (NODE, seq))


def _details(conn: sqlite3.Connection, seq: int, change: Callable[[dict[str, Any]], None]) -> None:
    (text,) = conn.execute("SELECT details FROM audit_events WHERE node_id = ? AND seq = ?",
                           (NODE, seq)).fetchone()
    doc = json.loads(text)
    change(doc)
    conn.execute("UPDATE audit_events SET details = ? WHERE node_id = ? AND seq = ?",
                 (canonical(doc), NODE, seq))


def _insert_copy_of(conn: sqlite3.Connection, seq: int, new_seq: int, **changes: Any) -> None:
    row = next(r for r in _rows(conn) if r["seq"] == seq)
    (top,) = conn.execute("SELECT max(id) FROM audit_events").fetchone()
    row.update(id=top + 1, seq=new_seq, **changes)
    cols = ", ".join(row)
    conn.execute(f"INSERT INTO audit_events ({cols}) VALUES ({', '.join('?' * len(row))})",
                 tuple(row.values()))


def _without_unique(conn: sqlite3.Connection) -> None:
    """The (node, seq) constraint goes the way of the triggers: rebuild the table without it."""
    conn.execute("CREATE TABLE loose AS SELECT * FROM audit_events")
    conn.execute("DROP TABLE audit_events")
    conn.execute("ALTER TABLE loose RENAME TO audit_events")


def t_edit(conn: sqlite3.Connection, b: Base) -> None:
    _edit(conn)


def t_edit_rechain(conn: sqlite3.Connection, b: Base) -> None:
    _edit(conn)
    _rechain(conn)


def t_delete(conn: sqlite3.Connection, b: Base) -> None:
    conn.execute("DELETE FROM audit_events WHERE node_id = ? AND seq = 10", (NODE,))


def t_delete_renumber(conn: sqlite3.Connection, b: Base) -> None:
    t_delete(conn, b)
    _renumber(conn)
    _rechain(conn)


def t_insert(conn: sqlite3.Connection, b: Base) -> None:
    conn.execute("UPDATE audit_events SET seq = -seq WHERE node_id = ? AND seq >= 12", (NODE,))
    conn.execute("UPDATE audit_events SET seq = 1 - seq WHERE node_id = ? AND seq < 0", (NODE,))
    _insert_copy_of(conn, 11, 12, actor="mallory")
    _rechain(conn)


def t_reorder(conn: sqlite3.Connection, b: Base) -> None:
    conn.execute("UPDATE audit_events SET seq = CASE seq WHEN 6 THEN -7 ELSE -6 END "
                 "WHERE node_id = ? AND seq IN (6, 7)", (NODE,))
    conn.execute("UPDATE audit_events SET seq = -seq WHERE node_id = ? AND seq < 0", (NODE,))


def t_drop_checkpoints_after_rechain(conn: sqlite3.Connection, b: Base) -> None:
    t_edit_rechain(conn, b)
    conn.execute("DELETE FROM audit_checkpoints")


def t_drop_checkpoints_and_their_events(conn: sqlite3.Connection, b: Base) -> None:
    _edit(conn)
    conn.execute("DELETE FROM audit_checkpoints")
    conn.execute("DELETE FROM audit_events WHERE event_type = 'audit.checkpoint'")
    _renumber(conn)
    _rechain(conn)


def t_rollback_to_older_checkpoint(conn: sqlite3.Connection, b: Base) -> None:
    conn.execute("DELETE FROM audit_checkpoints WHERE node_id = ? AND seq = ?", (NODE, b.cp2))
    conn.execute("DELETE FROM audit_events WHERE node_id = ? AND seq > ?", (NODE, b.cp1 + 1))
    _set_head(conn)


def t_delete_after_last_checkpoint(conn: sqlite3.Connection, b: Base) -> None:
    conn.execute("DELETE FROM audit_events WHERE node_id = ? AND seq > ?", (NODE, b.cp2))
    _set_head(conn)


def t_forge_signature(conn: sqlite3.Connection, b: Base) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    conn.execute("UPDATE audit_checkpoints SET signature = ? WHERE node_id = ? AND seq = ?",
                 (key.sign(b"forged", ec.ECDSA(hashes.SHA256())), NODE, b.cp2))


def t_swap_nodes(conn: sqlite3.Connection, b: Base) -> None:
    conn.execute("UPDATE audit_events SET node_id = 'x' WHERE node_id = ? AND seq = 3", (NODE,))
    conn.execute("UPDATE audit_events SET node_id = ? WHERE node_id = ? AND seq = 3",
                 (NODE, OTHER))
    conn.execute("UPDATE audit_events SET node_id = ? WHERE node_id = 'x'", (OTHER,))


def t_truncate(conn: sqlite3.Connection, b: Base) -> None:
    conn.execute("DELETE FROM audit_events WHERE node_id = ? AND seq > ?", (NODE, b.head - 3))


def t_alter_checkpoint_head(conn: sqlite3.Connection, b: Base) -> None:
    conn.execute("UPDATE audit_checkpoints SET head_hash = ? WHERE node_id = ? AND seq = ?",
                 ("f" * 64, NODE, b.cp1))


def t_alter_time(conn: sqlite3.Connection, b: Base) -> None:
    conn.execute("UPDATE audit_events SET time = '2020-01-01T00:00:00.000000Z' "
                 "WHERE node_id = ? AND seq = 8", (NODE,))


def t_duplicate(conn: sqlite3.Connection, b: Base) -> None:
    _without_unique(conn)
    _insert_copy_of(conn, 8, 8)


def t_payload_type(conn: sqlite3.Connection, b: Base) -> None:
    _details(conn, 9, lambda doc: doc.update(n=str(doc["n"])))


def _sign_checkpoints(conn: sqlite3.Connection, sign: Callable[[bytes], bytes],
                      spki_sha256: str | None) -> None:
    """Give every checkpoint the head its (rewritten) record now has, and a new signature."""
    from appliance.audit.record import checkpoint_payload

    hash_at = {r["seq"]: r["hash"] for r in _rows(conn)}
    for cp in list(conn.execute("SELECT * FROM audit_checkpoints WHERE node_id = ?", (NODE,))):
        head = hash_at[cp["seq"]]
        sig = sign(checkpoint_payload(NODE, cp["seq"], head, cp["time"]))
        conn.execute("UPDATE audit_checkpoints SET head_hash = ?, signature = ?, "
                     "spki_sha256 = COALESCE(?, spki_sha256) WHERE id = ?",
                     (head, sig, spki_sha256, cp["id"]))


def t_replace_public_key(conn: sqlite3.Connection, b: Base) -> None:
    """Rewrite history, sign with a key of one's own, and put that key in the database."""
    import hashlib

    t_edit_rechain(conn, b)
    key = ec.generate_private_key(ec.SECP256R1())
    spki = key.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    digest = hashlib.sha256(spki).hexdigest()
    assert conn.execute("UPDATE hsm_keys SET spki_der = ?, spki_sha256 = ? WHERE label = ?",
                        (spki, digest, "audit-key")).rowcount == 1
    _sign_checkpoints(conn, lambda data: key.sign(data, ec.ECDSA(hashes.SHA256())), digest)


TAMPERS: dict[str, tuple[Callable[[sqlite3.Connection, Base], None], set[str]]] = {
    "edit": (t_edit, {"edited"}),
    "edit_rechain": (t_edit_rechain, {"checkpoint_mismatch"}),
    "delete": (t_delete, {"missing"}),
    "delete_renumber": (t_delete_renumber, {"checkpoint_mismatch"}),
    "insert": (t_insert, {"checkpoint_mismatch"}),
    "reorder": (t_reorder, {"edited"}),
    "drop_checkpoints_after_rechain": (t_drop_checkpoints_after_rechain, {"rollback"}),
    "drop_checkpoints_and_their_events": (t_drop_checkpoints_and_their_events, {"rollback"}),
    "rollback_to_older_checkpoint": (t_rollback_to_older_checkpoint, {"rollback"}),
    "delete_after_last_checkpoint": (t_delete_after_last_checkpoint, {"truncated"}),
    "forge_signature": (t_forge_signature, {"checkpoint_signature"}),
    "swap_nodes": (t_swap_nodes, {"edited"}),
    "truncate": (t_truncate, {"head"}),
    "alter_checkpoint_head": (t_alter_checkpoint_head, {"checkpoint_signature"}),
    "alter_time": (t_alter_time, {"edited"}),
    "duplicate": (t_duplicate, {"out_of_order"}),
    "payload_type": (t_payload_type, {"edited"}),
    "replace_public_key": (t_replace_public_key, {"checkpoint_signature"}),
}


def _verify(d: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    proc = cli(d, "audit", "verify", "--json", *extra)
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def _kinds(report: dict[str, Any]) -> set[str]:
    return {p["kind"] for p in report["problems"]}


def test_the_untouched_copy_verifies(copy: Path, base: Base) -> None:
    rc, report = _verify(copy)
    assert rc == 0 and report["ok"], report
    assert report["checkpoints"] == 2 and report["nodes"] == [NODE, OTHER]
    # token anchor and anchor file hold the same newest checkpoint: 2 distinct anchors
    assert report["anchors"] == 2


@pytest.mark.parametrize("case", list(TAMPERS))
def test_tamper_is_caught(case: str, copy: Path, base: Base) -> None:
    tamper, expected = TAMPERS[case]
    with _open(copy) as conn:
        tamper(conn, base)
    rc, report = _verify(copy)
    assert rc == 1 and not report["ok"]
    assert expected <= _kinds(report), report["problems"]


def test_rollback_is_named_by_the_token_alone(copy: Path, base: Base) -> None:
    """Without the anchor file (the attacker deleted it) the token's object still shows it."""
    with _open(copy) as conn:
        t_rollback_to_older_checkpoint(conn, base)
    (copy / "audit-anchors.jsonl").unlink()
    rc, report = _verify(copy)
    assert rc == 1
    (p,) = [p for p in report["problems"] if p["kind"] == "rollback"]
    assert p["seq"] == base.cp2 and "token anchor audit-anchor-node-1" in p["message"]
    assert f"newest checkpoint is at record {base.cp1}" in p["message"]
    # and the token refuses to bless the rolled-back head with a new checkpoint
    refused = cli(copy, "audit", "checkpoint")
    assert refused.returncode != 0 and "rolled back" in refused.stderr, refused.stderr


def test_rollback_is_named_by_the_anchor_file_alone(copy: Path, base: Base) -> None:
    with _open(copy) as conn:
        t_rollback_to_older_checkpoint(conn, base)
    anchors = copy / "audit-anchors.jsonl"
    kept = copy.parent / "auditor-anchors.jsonl"
    shutil.copy(anchors, kept)
    rc, report = _verify(copy, "--public-key", str(_export_key(copy)), "--anchors", str(kept))
    assert rc == 1
    (p,) = [p for p in report["problems"] if p["kind"] == "rollback"]
    assert "anchor file auditor-anchors.jsonl (line 2)" in p["message"]


def test_a_key_file_kept_before_a_rollback_names_it(copy: Path, base: Base) -> None:
    kept = _export_key(copy)  # the auditor's copy: key and both checkpoints
    with _open(copy) as conn:
        t_rollback_to_older_checkpoint(conn, base)
    (copy / "audit-anchors.jsonl").unlink()
    rc, report = _verify(copy, "--public-key", str(kept))
    assert rc == 1
    (p,) = [p for p in report["problems"] if p["kind"] == "rollback"]
    assert p["seq"] == base.cp2 and f"key file {kept.name}" in p["message"]


# -- the PIN holder: the trust boundary --------------------------------------------------

_PIN_HOLDER = r"""
import sqlite3, sys
from pathlib import Path
from appliance import config
from appliance.audit.anchor import Checkpoint, token_label
from appliance.hsm import dataobj
from appliance.runtime import Appliance
sys.path.insert(0, sys.argv[2])
from tests.integration.test_audit_anchors import NODE, _open, _sign_checkpoints

d = Path(sys.argv[1])
app = Appliance(config.load(d / "appliance.yaml"))
signer = app.checkpoint_signer()
with _open(d) as conn:
    _sign_checkpoints(conn, lambda data: signer.sign(data)[1], None)
    row = conn.execute("SELECT * FROM audit_checkpoints WHERE node_id = ? ORDER BY seq DESC "
                       "LIMIT 1", (NODE,)).fetchone()
    cp = Checkpoint(row["node_id"], row["seq"], row["head_hash"], row["time"],
                    row["key_label"], row["spki_sha256"], row["algorithm"], row["signature"])
dataobj.replace(app.pool, token_label(NODE), cp.line().encode())
app.close()
"""


def test_pin_holder_resigning_is_caught_only_by_an_anchor_stream_they_cannot_write(
        copy: Path, base: Base) -> None:
    """Someone with the audit key's PIN rewrites history, re-signs every checkpoint in the
    token and overwrites the token's anchor: the database and the token then agree. Only the
    anchor stream (if they cannot write it) still shows the rewrite: the trust boundary."""
    with _open(copy) as conn:
        t_edit_rechain(conn, base)
    env = dict(os.environ)
    env.pop("SOFTHSM2_CONF", None)
    repo = str(Path(__file__).resolve().parents[2])
    subprocess.run([sys.executable, "-c", _PIN_HOLDER, str(copy), repo], check=True, env=env,
                   timeout=120, capture_output=True)
    rc, report = _verify(copy)
    assert rc == 1
    assert _kinds(report) == {"anchor_mismatch"}, report["problems"]
    assert all("anchor file audit-anchors.jsonl" in p["message"] for p in report["problems"])
    # if they can also rewrite the anchor stream, nothing the appliance holds shows it
    (copy / "audit-anchors.jsonl").unlink()
    rc, report = _verify(copy)
    assert rc == 0 and report["ok"], report["problems"]


# -- export, export-key and offline verification ---------------------------------------------


def _export_key(d: Path) -> Path:
    out = d.parent / f"{d.name}-audit-key.pem"
    cli(d, "audit", "export-key", "--out", str(out), check=True)
    return out


def _offline(export: Path, key: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    # a data directory that does not exist: no configuration, no database, no token
    proc = cli(Path("/nonexistent"), "audit", "verify", "--export", str(export),
               "--public-key", str(key), "--json", *extra)
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def test_export_key_and_offline_verification(copy: Path, base: Base, tmp_path: Path) -> None:
    key = _export_key(copy)
    text = key.read_text()
    assert text.count("-----BEGIN PUBLIC KEY-----") == 1
    assert text.count('"type":"appliance-audit-anchor"') == 2
    # the key file is a PEM file as openssl reads it, explanatory lines and all
    pem = subprocess.run(["openssl", "pkey", "-pubin", "-in", str(key), "-outform", "PEM"],
                         capture_output=True, text=True, check=True).stdout
    assert pem.strip() in text
    keys = json.loads(cli(copy, "hsm", "keys", "--json", check=True).stdout)
    (audit_key,) = [k for k in keys if k["label"] == "audit-key"]
    assert f"spki-sha256 {audit_key['spki_sha256']}" in text

    export = tmp_path / "log.jsonl"
    cli(copy, "audit", "export", "--out", str(export), check=True)
    lines = export.read_text().splitlines()
    rc, report = _offline(export, key, "--anchors", str(copy / "audit-anchors.jsonl"))
    assert rc == 0 and report["ok"], report["problems"]
    assert report["records"] == len(lines) and report["checkpoints"] == 2

    def variant(name: str, new_lines: list[str]) -> Path:
        path = tmp_path / name
        path.write_text("\n".join(new_lines) + "\n")
        return path

    edited = json.loads(lines[6])
    edited["actor"] = "mallory"
    rc, report = _offline(variant("edited.jsonl", [*lines[:6], json.dumps(edited),
                                                   *lines[7:]]), key)
    assert rc == 1
    first = report["problems"][0]
    assert (first["kind"], first["seq"], first["record_id"]) == ("edited", 7, 7)

    rc, report = _offline(variant("gap.jsonl", lines[:9] + lines[10:]), key)
    assert rc == 1 and report["problems"][0]["kind"] == "missing"
    assert "record(s) 10..10 missing" in report["problems"][0]["message"]

    # a tail cut after the newest checkpoint's record: its own audit.checkpoint record gone
    node1 = [line for line in lines if json.loads(line)["node_id"] == NODE]
    others = [line for line in lines if json.loads(line)["node_id"] != NODE]
    rc, report = _offline(variant("tail.jsonl", node1[:base.cp2] + others), key)
    assert rc == 1
    assert ("truncated", base.cp2 + 1) in {(p["kind"], p["seq"]) for p in report["problems"]}
    # cut before it: the signed checkpoint itself points past the end
    rc, report = _offline(variant("short.jsonl", node1[:base.cp2 - 2] + others), key)
    assert rc == 1
    assert ("truncated", base.cp2) in {(p["kind"], p["seq"]) for p in report["problems"]}

    garbage = variant("garbage.jsonl", [*lines[:3], "{not json", *lines[3:]])
    rc, report = _offline(garbage, key)
    assert rc == 1 and report["problems"][0]["kind"] == "unreadable"
    assert "line 4" in report["problems"][0]["message"]


def test_offline_export_against_an_auditors_anchors(copy: Path, base: Base,
                                                   tmp_path: Path) -> None:
    """The auditor kept the anchor stream; the operator hands over a rolled-back export with
    a key file made after the rollback (it lists only the older checkpoint)."""
    kept = tmp_path / "kept-anchors.jsonl"
    shutil.copy(copy / "audit-anchors.jsonl", kept)
    with _open(copy) as conn:
        t_rollback_to_older_checkpoint(conn, base)
    export = tmp_path / "log.jsonl"
    cli(copy, "audit", "export", "--out", str(export), check=True)
    key = _export_key(copy)
    rc, report = _offline(export, key)
    assert rc == 0, "the rolled-back export is consistent in itself"
    rc, report = _offline(export, key, "--anchors", str(kept))
    assert rc == 1
    assert ("truncated", base.cp2) in {(p["kind"], p["seq"]) for p in report["problems"]}
    # an anchor line appended by someone without the audit key is a finding, not a witness
    forged = json.loads(kept.read_text().splitlines()[-1])
    forged["seq"] += 1000
    forged["signature"] = base64.b64encode(b"\x30\x06\x02\x01\x01\x02\x01\x01").decode()
    with kept.open("a") as f:
        f.write(json.dumps(forged) + "\n")
    rc, report = _offline(export, key, "--anchors", str(kept))
    assert "anchor_signature" in _kinds(report)


def test_the_token_object_and_the_anchor_file(copy: Path, base: Base) -> None:
    """What pkcs11-tool sees in the token, and what the anchor file holds."""
    pin = (copy / "secrets" / "user.pin").read_text().strip()
    env = dict(os.environ, SOFTHSM2_CONF=str(copy / "softhsm" / "softhsm2.conf"))
    tool = ["pkcs11-tool", "--module", str(softhsm.find_module()), "--login", "--pin", pin]
    listing = subprocess.run([*tool, "--list-objects", "--type", "data"], capture_output=True,
                             text=True, env=env, timeout=60, check=True).stdout
    assert "label:          'audit-anchor-node-1'" in listing
    assert "private" in listing
    value = subprocess.run([*tool, "--read-object", "--type", "data", "--label",
                            "audit-anchor-node-1"], capture_output=True, env=env, timeout=60,
                           check=True).stdout
    token_cp = json.loads(value)
    lines = (copy / "audit-anchors.jsonl").read_text().splitlines()
    assert [json.loads(line)["seq"] for line in lines] == [base.cp1, base.cp2]
    assert json.loads(lines[-1]) == token_cp and token_cp["seq"] == base.cp2
    with closing(sqlite3.connect(copy / "appliance.db")) as conn:
        (head_hash,) = conn.execute("SELECT hash FROM audit_events WHERE node_id = ? AND seq = ?",
                                    (NODE, base.cp2)).fetchone()
    assert token_cp["head_hash"] == head_hash


def test_checkpoint_if_needed_follows_the_configured_frequency(copy: Path, base: Base) -> None:
    """For a frequent timer: a checkpoint only when records since the newest reach
    audit.checkpoint_every (or it is older than checkpoint_interval_seconds)."""
    conf = copy / "appliance.yaml"
    conf.write_text(conf.read_text().replace("checkpoint_every: 100", "checkpoint_every: 3"))
    made = cli(copy, "audit", "checkpoint", "--if-needed", check=True).stdout
    assert f"checkpoint at record {base.head} of {NODE}" in made
    again = cli(copy, "audit", "checkpoint", "--if-needed", check=True).stdout
    assert again.strip() == f"no checkpoint due for {NODE}"
    lines = (copy / "audit-anchors.jsonl").read_text().splitlines()
    assert [json.loads(line)["seq"] for line in lines] == [base.cp1, base.cp2, base.head]


_SERVICE = r"""
import json, sys
from pathlib import Path
from appliance import config
from appliance.audit.log import Actor
from appliance.runtime import Appliance

app = Appliance(config.load(Path(sys.argv[1]) / "appliance.yaml"))
app.enable_service_checkpoints()  # what create_app does in every worker
for i in range(3):
    with app.db.transaction() as s:
        app.audit_log().append(s, "test.service", Actor("svc", "service"), details={"i": i})
app.close()
"""


def test_the_service_checkpoints_at_every_commit_when_configured(copy: Path, base: Base) -> None:
    conf = copy / "appliance.yaml"
    conf.write_text(conf.read_text().replace("checkpoint_every: 100", "checkpoint_every: 1"))
    env = dict(os.environ)
    env.pop("SOFTHSM2_CONF", None)
    subprocess.run([sys.executable, "-c", _SERVICE, str(copy)], check=True, env=env,
                   timeout=120, capture_output=True)
    with closing(sqlite3.connect(copy / "appliance.db")) as conn:
        cps = [seq for (seq,) in conn.execute(
            "SELECT seq FROM audit_checkpoints WHERE node_id = ? ORDER BY seq", (NODE,))]
        (head,) = conn.execute("SELECT seq FROM audit_heads WHERE node_id = ?",
                               (NODE,)).fetchone()
    # each of the three commits: its record, then a checkpoint of it and that checkpoint's record
    assert cps == [base.cp1, base.cp2, base.head + 1, base.head + 3, base.head + 5]
    assert head == base.head + 6
    lines = (copy / "audit-anchors.jsonl").read_text().splitlines()
    assert [json.loads(line)["seq"] for line in lines] == cps
    rc, report = _verify(copy)
    assert rc == 0 and report["ok"], report["problems"]
