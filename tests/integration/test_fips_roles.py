"""Issue 14, roles: officers, the crypto-officer quorum, zeroization, seal and the auditor's
report, on a real SoftHSM token with real clients (the appliance CLI, OpenSC's
pkcs11-tool). One ``quickstart --fips`` node serves the whole module; the tests run in
file order and the last one zeroizes everything.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.ceremony_helpers import audit_events, authorities
from tests.conftest import operator_spec, run_cli
from tests.ptyrun import run_with_prompt

pytestmark = pytest.mark.skipif(shutil.which("pkcs11-tool") is None,
                                reason="opensc (pkcs11-tool) not installed")


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("fips-roles") / "node"
    proc = run_cli("quickstart", "--dir", str(d), "--fips", check=True)
    assert "3 trial crypto officers registered (quorum 2)" in proc.stdout, proc.stdout
    return d


def officer_args(d: Path, *names: str) -> list[str]:
    out = []
    for n in names:
        out += ["--officer", f"{n}={d / 'secrets' / f'{n}.secret'}"]
    return out


def secret_file(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text + "\n", encoding="utf-8")
    path.chmod(mode)
    return path


def pkcs11_objects(d: Path) -> str:
    """``pkcs11-tool --login --list-objects`` on the node's token, the PIN typed at its
    prompt (never on the command line)."""
    profile = yaml.safe_load((d / "hsm.yaml").read_text())
    pin = (d / "secrets" / "user.pin").read_text().strip()
    rc, out = run_with_prompt(
        ["pkcs11-tool", "--module", profile["module"], "--token-label",
         profile["token"]["label"], "--login", "--list-objects"], "PIN:", pin,
        env={"SOFTHSM2_CONF": str(d / "softhsm" / "softhsm2.conf"), "PATH": "/usr/bin:/bin"})
    assert rc == 0, out
    return out


def token_labels(d: Path) -> set[str]:
    keys = json.loads(run_cli("--dir", str(d), "hsm", "keys", "--json", check=True).stdout)
    return {k["label"] for k in keys}


def events(d: Path, event_type: str) -> list[dict[str, Any]]:
    return [e for e in audit_events(d) if e["event_type"] == event_type]


def test_quickstart_fips_registers_trial_officers_and_seals(node: Path) -> None:
    conf = yaml.safe_load((node / "appliance.yaml").read_text())
    assert conf["fips"]["enabled"] is True
    for n in ("officer-1", "officer-2", "officer-3"):
        assert (node / "secrets" / f"{n}.secret").stat().st_mode & 0o777 == 0o600
    listed = json.loads(run_cli("--dir", str(node), "fips", "officer", "list", "--json",
                                check=True).stdout)
    assert [(o["name"], o["role"]) for o in listed if o["role"] == "crypto-officer"] == [
        (f"officer-{i}", "crypto-officer") for i in (1, 2, 3)]
    # Beside them, one trial operator (separation of duties: not a crypto officer).
    assert [(o["name"], o["role"]) for o in listed if o["role"] != "crypto-officer"] == [
        ("operator-1", "operator")]
    (sealed,) = events(node, "fips.manifest.sealed")
    assert sealed["details"]["officers"] == ["officer-1", "officer-2"]
    # verifiers only: no officer secret anywhere in the audit log or the officers table
    secret = (node / "secrets" / "officer-1.secret").read_text().strip()
    assert secret not in "".join(e["raw"] for e in audit_events(node))
    with sqlite3.connect(f"file:{node / 'appliance.db'}?mode=ro", uri=True) as conn:
        verifiers = [r[0] for r in conn.execute("SELECT verifier FROM officers")]
    conn.close()
    assert all(v.startswith("scrypt$") and secret not in v for v in verifiers)


def test_officers_add_list_remove_audited_secret_from_file_only(node: Path,
                                                                tmp_path: Path) -> None:
    d = str(node)
    loose = secret_file(tmp_path / "loose", "auditor secret number one", 0o644)
    proc = run_cli("--dir", d, "fips", "officer", "add", "aud-1", "--role", "auditor",
                   "--secret-file", str(loose))
    assert proc.returncode == 1 and "chmod 600" in proc.stderr, proc.stderr
    good = secret_file(tmp_path / "good", "auditor secret number one")
    run_cli("--dir", d, "fips", "officer", "add", "aud-1", "--role", "auditor",
            "--secret-file", str(good), check=True)
    # a new crypto officer needs the registered officers' quorum (FIPS mode, 3 registered)
    co = secret_file(tmp_path / "co", "a new crypto officer secret")
    proc = run_cli("--dir", d, "fips", "officer", "add", "officer-4", "--role",
                   "crypto-officer", "--secret-file", str(co))
    assert proc.returncode == 1 and "quorum_refused" in proc.stderr, proc.stderr
    run_cli("--dir", d, "fips", "officer", "add", "officer-4", "--role", "crypto-officer",
            "--secret-file", str(co), *officer_args(node, "officer-1", "officer-3"),
            check=True)
    listed = {o["name"]: o["role"] for o in json.loads(run_cli(
        "--dir", d, "fips", "officer", "list", "--json", check=True).stdout)}
    assert listed["aud-1"] == "auditor" and listed["officer-4"] == "crypto-officer"
    run_cli("--dir", d, "fips", "officer", "remove", "aud-1", check=True)
    run_cli("--dir", d, "fips", "officer", "remove", "officer-4",
            *officer_args(node, "officer-1", "officer-2"), check=True)
    proc = run_cli("--dir", d, "fips", "officer", "remove", "aud-1")
    assert proc.returncode == 1 and "officer_not_found" in proc.stderr
    listed_now = run_cli("--dir", d, "fips", "officer", "list", check=True).stdout
    assert "aud-1" not in listed_now and "officer-4" not in listed_now
    assert "removed" in run_cli("--dir", d, "fips", "officer", "list", "--all",
                                check=True).stdout
    added = [e["object_ids"]["officer"] for e in events(node, "fips.officer.added")]
    removed = [e["object_ids"]["officer"] for e in events(node, "fips.officer.removed")]
    assert {"aud-1", "officer-4"} <= set(added) and {"aud-1", "officer-4"} <= set(removed)
    raw = "".join(e["raw"] for e in audit_events(node))
    assert "auditor secret number one" not in raw and "crypto officer secret" not in raw


def test_fips_genkey_without_quorum_is_refused_and_audited_with_quorum_works(
        node: Path) -> None:
    d = str(node)
    before = len(events(node, "fips.quorum.refused"))
    for extra in ([], officer_args(node, "officer-2"),
                  officer_args(node, "officer-2", "officer-2"),
                  ["--officer", f"officer-1={node / 'secrets' / 'officer-2.secret'}",
                   "--officer", f"officer-3={node / 'secrets' / 'officer-3.secret'}"]):
        proc = run_cli("--dir", d, "hsm", "genkey", "--label", "fips-k1", "--type", "ec-p256",
                       *extra)
        assert proc.returncode == 1, proc.stdout
        assert "error [quorum_refused]: FIPS mode: hsm genkey" in proc.stderr, proc.stderr
    refused = events(node, "fips.quorum.refused")[before:]
    assert len(refused) == 4 and {e["outcome"] for e in refused} == {"denied"}
    assert "fips-k1" not in token_labels(node)
    # the environment form: NAME=FILE pairs
    env = {"APPLIANCE_OFFICERS": ",".join(
        f"officer-{i}={node / 'secrets' / f'officer-{i}.secret'}" for i in (1, 3))}
    run_cli("--dir", d, "hsm", "genkey", "--label", "fips-k1", "--type", "ec-p256", env=env,
            check=True)
    assert "fips-k1" in token_labels(node)
    met = events(node, "fips.quorum.met")[-1]
    assert met["object_ids"]["action"] == "hsm genkey"
    assert met["details"]["officers"] == ["officer-1", "officer-3"]


def test_fips_ceremony_that_makes_keys_needs_the_quorum(node: Path, tmp_path: Path) -> None:
    d = str(node)
    script = tmp_path / "key.yaml"
    script.write_text(yaml.safe_dump({
        "version": 1, "name": "fips-key", "description": "one key, FIPS quorum",
        "operators": ["test"],
        "steps": [{"id": "k", "type": "key", "label": "fips-cer", "key_type": "ec-p384"}]}))
    proc = run_cli("--dir", d, "ceremony", "run", str(script), "--out", str(tmp_path / "r1"))
    assert proc.returncode == 1, proc.stdout
    assert "error [quorum_refused]: FIPS mode: ceremony run" in proc.stderr, proc.stderr
    assert not (tmp_path / "r1").exists() and "fips-cer" not in token_labels(node)
    run_cli("--dir", d, "ceremony", "run", str(script), "--out", str(tmp_path / "r2"),
            *officer_args(node, "officer-2", "officer-3"), check=True)
    assert "fips-cer" in token_labels(node)
    met = events(node, "fips.quorum.met")[-1]
    assert met["object_ids"] == {"action": "ceremony run", "ceremony": "fips-key"}


def test_seal_then_report_verifies_and_a_changed_byte_fails(node: Path,
                                                           tmp_path: Path) -> None:
    d = str(node)
    assert run_cli("--dir", d, "fips", "seal").returncode == 1
    run_cli("--dir", d, "fips", "seal", *officer_args(node, "officer-2", "officer-3"),
            check=True)
    out = tmp_path / "report.json"
    run_cli("--dir", d, "fips", "report", "--out", str(out), check=True)
    proc = run_cli("--dir", d, "fips", "report", "--verify", str(out))
    assert proc.returncode == 0 and proc.stdout.strip().endswith("OK"), proc.stdout
    report = json.loads(out.read_text())["report"]
    assert report["mode"]["configured"] == "fips"
    assert report["manifest"]["matches"] is True
    assert report["manifest"]["sealed_by"] == ["officer-2", "officer-3"]
    by_label = {k["label"]: k for k in report["keys"]}
    assert {"audit-key", "root-ca", "issuing-ca", "issuing-ocsp", "fips-k1",
            "fips-cer"} <= set(by_label)
    for k in by_label.values():
        assert k["sensitive"] and k["never_extractable"] and k["always_sensitive"]
        assert not k["extractable"] and k["approved"] is True
    assert {a["name"]: a["algorithm"] for a in report["authorities"]}["issuing"] == "ec-p256"
    assert report["refusals"]["quorum_refused"] >= 6
    assert {o["name"] for o in report["officers"]} >= {"officer-1", "aud-1"}
    assert "RFC 6960" in report["notes"]["ocsp_certid_sha1"]
    assert report["tls"]["minimum_version"] == "TLSv1.2"
    # the auditor's check without the token: the exported audit public key
    key = tmp_path / "audit.pem"
    run_cli("--dir", d, "audit", "export-key", "--out", str(key), check=True)
    assert run_cli("fips", "report", "--verify", str(out), "--public-key", str(key),
                   "--dir", d).returncode == 0
    raw = out.read_bytes()
    changed = tmp_path / "changed.json"
    changed.write_bytes(raw.replace(b'"configured": "fips"', b'"configured": "fipz"', 1))
    assert changed.read_bytes() != raw
    proc = run_cli("--dir", d, "fips", "report", "--verify", str(changed))
    assert proc.returncode == 1 and "NOT VALID" in proc.stdout, proc.stdout


def test_zeroize_label_destroys_the_key_and_retires_its_authority(node: Path) -> None:
    d = str(node)
    assert "issuing-ocsp" in pkcs11_objects(node)
    proc = run_cli("--dir", d, "hsm", "zeroize", "--label", "issuing-ocsp")
    assert proc.returncode == 1 and "quorum_refused" in proc.stderr, proc.stderr
    assert "issuing-ocsp" in pkcs11_objects(node)
    proc = run_cli("--dir", d, "hsm", "zeroize", "--label", "issuing-ocsp",
                   *officer_args(node, "officer-1", "officer-2"), check=True)
    assert "authority 'issuing-ocsp' retired" in proc.stdout
    listing = pkcs11_objects(node)
    assert "issuing-ocsp" not in listing and "issuing-ca" in listing
    cas = authorities(node)
    assert cas["issuing-ocsp"]["status"] == "retired" and cas["issuing"]["status"] == "active"
    (done,) = events(node, "hsm.zeroized")
    assert done["object_ids"] == {"label": "issuing-ocsp"}
    assert {o["class"] for o in done["details"]["destroyed"]} == {"private_key", "public_key"}
    assert events(node, "hsm.zeroize.started")


def test_zeroize_all_empties_the_token_and_wipes_provisioner_and_eab_secrets(
        node: Path) -> None:
    d = str(node)
    run_cli("--dir", d, "eab", "add", "--provisioner", "acme", "--reference", "team-a",
            "--operator", operator_spec(node), check=True)
    secrets_dir = node / "secrets"
    assert (secrets_dir / "provisioner-admin.jwe").exists()
    assert (secrets_dir / "acme-eab-wrap.key").exists()
    run_cli("--dir", d, "hsm", "zeroize", "--all",
            *officer_args(node, "officer-3", "officer-1"), check=True)
    listing = pkcs11_objects(node)
    assert "Private Key Object" not in listing and "Public Key Object" not in listing
    assert "Data object" not in listing
    left = {p.name for p in secrets_dir.iterdir()}
    assert not {n for n in left if n.startswith("provisioner-")}
    assert "acme-eab-wrap.key" not in left and "user.pin" in left
    with sqlite3.connect(node / "appliance.db") as conn:
        eab = conn.execute("SELECT hmac_sealed, revoked_at FROM acme_eab_keys").fetchall()
    assert eab and all(row[0] == b"" and row[1] is not None for row in eab)
    cas = authorities(node)
    assert all(ca["status"] == "retired" for name, ca in cas.items()), cas
    done = events(node, "hsm.zeroized")[-1]
    assert done["object_ids"] == {"scope": "all"} and done["details"]["eab_keys_wiped"] == 1


def test_default_mode_zeroize_needs_yes_and_no_quorum(tmp_path: Path) -> None:
    d = tmp_path / "plain"
    run_cli("init", "--dir", str(d), check=True)
    run_cli("--dir", str(d), "hsm", "genkey", "--label", "k-plain", "--type", "ec-p256",
            check=True)  # default mode: no officers, no quorum
    proc = run_cli("--dir", str(d), "hsm", "zeroize", "--label", "k-plain")
    assert proc.returncode == 2 and "--yes" in proc.stderr, proc.stderr
    assert "k-plain" in token_labels(d)
    run_cli("--dir", str(d), "hsm", "zeroize", "--label", "k-plain", "--yes", check=True)
    assert "k-plain" not in token_labels(d) and "k-plain" not in pkcs11_objects(d)
