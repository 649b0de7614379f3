"""Every fuzz target runs for a few seconds (all at once, each in its own process) from the
corpus kept in the repository, and finds nothing.

Here the built-in mutation loop runs (it starts in a second; atheris' import instrumentation
takes several per target), unless ``FUZZ_CI_ATHERIS=1``. The coverage-guided runs, for
minutes: ``scripts/fuzz.sh [SECONDS]``."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fuzz import harness

REPO = Path(__file__).resolve().parents[2]
TARGETS = ["sign", "renew", "revoke", "acme", "ocsp", "ceremony", "templates", "app"]
SECONDS = float(os.environ.get("FUZZ_CI_SECONDS", "3"))
MODE = [] if os.environ.get("FUZZ_CI_ATHERIS") == "1" else ["--builtin"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, tuple[int, str, Path]]]:
    work = tmp_path_factory.mktemp("fuzz")
    procs = {}
    for t in TARGETS:
        procs[t] = subprocess.Popen(
            [sys.executable, "-m", f"tests.fuzz.fuzz_{t}", "--seconds", str(SECONDS),
             "--work", str(work / t), *MODE], cwd=REPO, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True)
    out = {}
    try:
        for t, proc in procs.items():
            text, _ = proc.communicate(timeout=SECONDS * 10 + 60)
            out[t] = (proc.returncode, text, work / t / "findings")
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
    yield out


@pytest.mark.parametrize("target", TARGETS)
def test_target_runs_and_finds_nothing(runs: dict[str, tuple[int, str, Path]],
                                       target: str) -> None:
    rc, text, findings = runs[target]
    assert rc == 0 and not any(findings.iterdir()), text[-6000:]
    # It really ran: the seeds and a good number of mutations of them.
    seeds = len(list((harness.CORPUS / target).iterdir()))
    assert harness.parse_stats(text) > max(100, seeds), text[-3000:]
