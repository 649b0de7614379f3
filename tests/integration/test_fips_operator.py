"""Issue 14, roles: in FIPS mode an operator action needs ONE authenticated operator.

One ``quickstart --fips`` node (real SoftHSM, the real CLI in a new process each time):
an operator command without ``--operator``, with a crypto officer's credentials (wrong
role: separation of duties) or with a wrong secret is refused, audited as
``fips.role.refused`` (never with the secret) and changes nothing; with the trial operator
it works and the operator is the audit record's actor; read-only commands need no role;
in the default mode nothing changes.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ceremony_helpers import audit_events
from tests.conftest import operator_spec, run_cli


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    d = tmp_path_factory.mktemp("fips-operator") / "node"
    proc = run_cli("quickstart", "--dir", str(d), "--fips", check=True)
    assert "trial operator 'operator-1' registered" in proc.stdout, proc.stdout
    yield d


def _provisioners(d: Path) -> set[str]:
    out = run_cli("--dir", str(d), "provisioner", "list", "--json", check=True).stdout
    return {p["name"] for p in json.loads(out)}


def _refusals(d: Path) -> list[dict[str, object]]:
    return [e for e in audit_events(d) if e["event_type"] == "fips.role.refused"]


def test_trial_operator_secret_is_private(node: Path) -> None:
    assert (node / "secrets" / "operator-1.secret").stat().st_mode & 0o777 == 0o600


def test_read_only_command_needs_no_role(node: Path) -> None:
    assert "admin" in _provisioners(node)


@pytest.mark.parametrize("how", ["none", "crypto-officer", "wrong-secret"])
def test_operator_command_refused_audited_and_changes_nothing(node: Path, tmp_path: Path,
                                                              how: str) -> None:
    name = f"x-{how}"
    args = ["--dir", str(node), "provisioner", "add", name, "--type", "jwk"]
    if how == "crypto-officer":
        args += ["--operator", operator_spec(node, "officer-1")]
    elif how == "wrong-secret":
        wrong = tmp_path / "wrong.secret"
        wrong.write_text("not-the-operator-secret\n")
        wrong.chmod(0o600)
        args += ["--operator", f"operator-1={wrong}"]
    before = len(_refusals(node))
    proc = run_cli(*args, env={"APPLIANCE_OPERATOR": ""})
    assert proc.returncode != 0
    assert "FIPS mode" in proc.stderr and "operator" in proc.stderr, proc.stderr
    if how == "crypto-officer":
        assert "separation of duties" in proc.stderr, proc.stderr
    assert name not in _provisioners(node)
    refusals = _refusals(node)
    assert len(refusals) == before + 1
    last = refusals[-1]
    assert last["outcome"] == "denied"
    assert last["object_ids"] == {"action": "provisioner add"}
    details = last["details"]
    assert isinstance(details, dict)
    assert details["claimed"] == {"none": "", "crypto-officer": "officer-1",
                                  "wrong-secret": "operator-1"}[how]
    assert details["reason"]
    for secret_file in (node / "secrets").glob("*.secret"):
        assert secret_file.read_text().strip() not in str(last["raw"])
    assert "not-the-operator-secret" not in str(last["raw"])


def test_operator_command_works_with_the_operator_as_actor(node: Path) -> None:
    run_cli("--dir", str(node), "provisioner", "add", "x-ok", "--type", "jwk",
            "--generate-password", "--operator", operator_spec(node), check=True)
    assert "x-ok" in _provisioners(node)
    with sqlite3.connect(f"file:{node / 'appliance.db'}?mode=ro", uri=True) as conn:
        (actor, role) = conn.execute(
            "SELECT actor, role FROM audit_events WHERE event_type = "
            "'provisioner.added' ORDER BY seq DESC LIMIT 1").fetchone()
    assert (actor, role) == ("operator:operator-1", "operator")
    # the environment works as well as the option
    run_cli("--dir", str(node), "provisioner", "remove", "x-ok",
            env={"APPLIANCE_OPERATOR": operator_spec(node)}, check=True)
    assert "x-ok" not in _provisioners(node)


def test_default_mode_needs_no_operator(tmp_path: Path) -> None:
    d = tmp_path / "plain"
    run_cli("init", "--dir", str(d), check=True)
    # (an init has no CA yet, so an inventory record rather than a provisioner)
    run_cli("--dir", str(d), "inventory", "add", "web-1", "--dns", "web-1.example.test",
            check=True, env={"APPLIANCE_OPERATOR": ""})
    out = run_cli("--dir", str(d), "inventory", "list", "--json", check=True).stdout
    assert "web-1" in out
