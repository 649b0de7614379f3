"""Running one fuzz target: with atheris (coverage-guided libFuzzer) when it is installed,
else with a small built-in mutation loop over the same corpus.

A target is a module with ``one_input(data: bytes) -> None`` that feeds the bytes to the
real parsing and validation code and returns normally for every refusal the appliance
means (its own errors, answered as a 4xx). Anything else that escapes is a finding: the
input is written to the artifact directory and the run exits non-zero.

    python -m tests.fuzz.<target> [--seconds N] [--work DIR] [--builtin]

prints, last, ``fuzz <target>: <executions> executions in <seconds> s[, FINDING <file>]``.
The repository's corpus (tests/fuzz/corpus/<target>/) is only read; inputs that found new
coverage go to the work directory.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import re
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

CORPUS = Path(__file__).resolve().parent / "corpus"
INSTRUMENTED = ["appliance", "jwt", "josepy", "yaml"]


def _args(target: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=f"fuzz {target}")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--work", type=Path, default=None,
                   help="where new corpus entries and findings go (default: a temp dir)")
    p.add_argument("--builtin", action="store_true", help="the mutation loop, not atheris")
    return p.parse_args()


def run(target: str, load: Callable[[], Callable[[bytes], None]]) -> None:
    """Fuzz ``target``: ``load`` imports the code under test (inside atheris' import
    instrumentation when atheris is used) and returns the target's ``one_input``."""
    args = _args(target)
    work = args.work or Path(tempfile.mkdtemp(prefix=f"fuzz-{target}-"))
    (work / "corpus").mkdir(parents=True, exist_ok=True)
    (work / "findings").mkdir(parents=True, exist_ok=True)
    seeds = CORPUS / target
    try:
        import atheris
    except ImportError:
        atheris = None
    if atheris is None or args.builtin:
        _builtin(target, load(), seeds, work, args.seconds)
        return
    with atheris.instrument_imports(include=INSTRUMENTED):
        one_input = load()
    started = time.monotonic()
    argv = [sys.argv[0], str(work / "corpus"), str(seeds),
            f"-max_total_time={max(1, round(args.seconds))}", "-timeout=10",
            "-rss_limit_mb=3072", f"-artifact_prefix={work / 'findings'}/",
            "-print_final_stats=1"]
    atheris.Setup(argv, one_input)
    try:
        atheris.Fuzz()
    finally:  # atheris exits the process itself; this runs only on an exception path
        _report(target, -1, time.monotonic() - started, None)


def _report(target: str, execs: int, seconds: float, finding: Path | None) -> None:
    line = f"fuzz {target}: {execs} executions in {seconds:.1f} s"
    if finding is not None:
        line += f", FINDING {finding}"
    print(line, flush=True)


def _mutate(rnd: random.Random, data: bytes, pool: list[bytes]) -> bytes:
    out = bytearray(data)
    for _ in range(rnd.randint(1, 6)):
        op = rnd.random()
        i = rnd.randrange(len(out) + 1)
        if op < 0.3 and out:
            out[min(i, len(out) - 1)] = rnd.randrange(256)
        elif op < 0.45 and out:
            out[min(i, len(out) - 1)] ^= 1 << rnd.randrange(8)
        elif op < 0.6:
            del out[i:i + rnd.randint(1, 16)]
        elif op < 0.75:
            out[i:i] = bytes(rnd.randrange(256) for _ in range(rnd.randint(1, 8)))
        elif op < 0.85:
            out[i:i] = rnd.choice((b"\\ud800", b"[", b"{", b"\xff", b"0" * 40, b"\x00",
                                   b"-", b"\"", b"\\", b":", b"*.", b"\x82\x00", b"\x30\x80"))
        elif pool:  # splice with another seed
            other = rnd.choice(pool)
            j = rnd.randrange(len(other) + 1)
            out[i:] = other[j:]
        else:
            out[i:i] = out[:rnd.randint(0, 32)]
    return bytes(out[:200_000])


def _builtin(target: str, one_input: Callable[[bytes], None], seeds: Path, work: Path,
             seconds: float) -> None:
    pool = [p.read_bytes() for p in sorted(seeds.glob("*")) if p.is_file()] or [b""]
    rnd = random.Random(int(os.environ.get("FUZZ_SEED", "0")) or None)
    started = time.monotonic()
    execs = 0
    for data in list(pool):  # every seed once, as it is
        _one(target, one_input, data, work, execs, started)
        execs += 1
    while time.monotonic() - started < seconds:
        _one(target, one_input, _mutate(rnd, rnd.choice(pool), pool), work, execs, started)
        execs += 1
    _report(target, execs, time.monotonic() - started, None)


def _one(target: str, one_input: Callable[[bytes], None], data: bytes, work: Path,
         execs: int, started: float) -> None:
    try:
        one_input(data)
    except Exception:
        path = work / "findings" / f"crash-{hashlib.sha1(data).hexdigest()}"
        path.write_bytes(data)
        traceback.print_exc()
        _report(target, execs + 1, time.monotonic() - started, path)
        sys.exit(1)


def parse_stats(output: str) -> int:
    """The number of executions a run reports (atheris/libFuzzer or the built-in loop)."""
    for pattern in (r"fuzz \S+: (\d+) executions", r"Done (\d+) runs",
                    r"stat::number_of_executed_units: (\d+)"):
        found = re.findall(pattern, output)
        if found:
            return int(found[-1])
    return 0
