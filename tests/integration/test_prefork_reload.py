"""The listeners' supervisor on a reload (SIGHUP), with real forked workers.

The workers here are small functions instead of the appliance's listeners, so that a
new generation can be made to fail its boot on purpose: the supervisor must then keep
the old workers serving (a reload never takes a listener down), and retire old workers
only once every new one has said it serves.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

Running = tuple[subprocess.Popen[bytes], Path, Path]

SCRIPT = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from appliance.web import prefork

    work = Path(sys.argv[1])

    def worker(sock, opts, supervisor):
        if (work / "fail").exists():
            return 1  # dies before it serves: a boot failure
        time.sleep(float((work / "boot-delay").read_text() or 0))
        prefork.notify_ready()
        (work / f"ready-{os.getpid()}").touch()
        while os.getppid() == supervisor:
            time.sleep(0.05)
        return 0

    opts = prefork.parse_args(["--bind", "127.0.0.1:0", "--workers", "2",
                               "--graceful-timeout", "2"])
    sockets, lock = prefork.listen_sockets(opts.bind, opts.workers)
    raise SystemExit(prefork.Supervisor(opts, sockets, lock, worker).run())
""")


def _children(pid: int) -> set[int]:
    out = set()
    for p in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{p}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            out.add(int(p))
    return out


def _until(cond: Callable[[], bool], timeout: float = 15) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "condition not reached"
        time.sleep(0.05)


@pytest.fixture
def supervisor(tmp_path: Path) -> Iterator[Running]:
    (tmp_path / "boot-delay").write_text("0")
    log = tmp_path / "supervisor.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(tmp_path)],
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        _until(lambda: len(list(tmp_path.glob("ready-*"))) == 2)
        yield proc, tmp_path, log
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)


def test_old_workers_stay_until_every_new_one_serves(supervisor: Running) -> None:
    proc, work, log = supervisor
    old = _children(proc.pid)
    assert len(old) == 2
    (work / "boot-delay").write_text("2")  # the new generation takes 2 s to serve
    proc.send_signal(signal.SIGHUP)
    _until(lambda: len(_children(proc.pid)) == 4)
    time.sleep(1)
    assert old <= _children(proc.pid), "old workers retired before the new ones served"
    _until(lambda: not old & _children(proc.pid))
    assert len(_children(proc.pid)) == 2
    assert "reloaded: the new workers serve" in log.read_text()
    assert proc.poll() is None


def test_a_new_worker_that_fails_to_boot_ends_the_reload_not_the_service(
        supervisor: Running) -> None:
    proc, work, log = supervisor
    old = _children(proc.pid)
    (work / "fail").touch()
    proc.send_signal(signal.SIGHUP)
    _until(lambda: "reload failed" in log.read_text())
    time.sleep(0.5)
    assert proc.poll() is None
    assert _children(proc.pid) == old
    # The cause gone, the next reload goes through.
    (work / "fail").unlink()
    proc.send_signal(signal.SIGHUP)
    _until(lambda: "reloaded: the new workers serve" in log.read_text())
    _until(lambda: len(_children(proc.pid)) == 2 and not old & _children(proc.pid))
    assert proc.poll() is None


def test_a_worker_that_fails_to_boot_at_start_still_stops_the_group(tmp_path: Path) -> None:
    (tmp_path / "boot-delay").write_text("0")
    (tmp_path / "fail").touch()
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)],
                          capture_output=True, timeout=30)
    assert proc.returncode == 3, proc.stderr
