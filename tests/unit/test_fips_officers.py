"""Officers' secrets are read from files only their owner can read, one line; the
``NAME=FILE`` presentations (options or ``APPLIANCE_OFFICERS``) are parsed strictly."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.ceremony import runner as ceremony_runner
from appliance.fips import officers as off
from appliance.fips import quorum


def _file(path: Path, data: str, mode: int = 0o600) -> Path:
    path.write_text(data, encoding="utf-8")
    path.chmod(mode)
    return path


def test_secret_file_one_line_owner_only(tmp_path: Path) -> None:
    assert off.read_secret_file(_file(tmp_path / "a", "correct horse battery\n")) == \
        "correct horse battery"
    assert off.read_secret_file(_file(tmp_path / "b", "no newline at the end")) == \
        "no newline at the end"


@pytest.mark.parametrize(("data", "mode", "words"), [
    ("correct horse battery\n", 0o640, "chmod 600"),
    ("correct horse battery\n", 0o604, "chmod 600"),
    ("two\nlines of secret\n", 0o600, "one line"),
    ("short\n", 0o600, "12..1024"),
    ("x" * 2000, 0o600, "12..1024"),
])
def test_bad_secret_files_are_refused(tmp_path: Path, data: str, mode: int,
                                      words: str) -> None:
    with pytest.raises(off.OfficerError, match=words):
        off.read_secret_file(_file(tmp_path / "s", data, mode))


def test_symlink_and_missing_secret_files_are_refused(tmp_path: Path) -> None:
    target = _file(tmp_path / "real", "correct horse battery\n")
    (tmp_path / "link").symlink_to(target)
    with pytest.raises(off.OfficerError, match="cannot open"):
        off.read_secret_file(tmp_path / "link")
    with pytest.raises(off.OfficerError, match="cannot open"):
        off.read_secret_file(tmp_path / "missing")


def test_presentations_from_options_or_environment(tmp_path: Path) -> None:
    a = _file(tmp_path / "a", "secret of alice 123\n")
    b = _file(tmp_path / "b", "secret of bob 4567\n")
    assert off.presented([f"alice={a}"], f"bob={b}") == [("alice", "secret of alice 123")]
    assert off.presented([], f"alice={a}, bob={b}") == [("alice", "secret of alice 123"),
                                                       ("bob", "secret of bob 4567")]
    assert off.presented([], None) == []
    for bad in ("alice", "alice=", "=file", "bad name=/x"):
        with pytest.raises(off.OfficerError):
            off.parse_presentation(bad)


def test_names_and_roles() -> None:
    assert off.check_role("auditor") == "auditor"
    with pytest.raises(off.OfficerError, match="crypto-officer, operator, auditor"):
        off.check_role("admin")
    for bad in ("", "-x", "a" * 65, "a b", "é"):
        with pytest.raises(off.OfficerError):
            off.check_name(bad)


def test_ceremony_quorum_is_the_fips_one() -> None:
    """Moved down a floor, one implementation: ceremonies check their quorums with it."""
    assert ceremony_runner.quorum_mod.check_quorum is quorum.check_quorum
    assert ceremony_runner.quorum_mod.QuorumError is quorum.QuorumError
