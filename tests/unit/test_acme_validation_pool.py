"""The per-process validation pool: bounded, frees a slot however a job ends, and a forked
child starts with a pool of its own (gunicorn forks workers after the app may be loaded)."""

from __future__ import annotations

import os
import threading

import pytest

from appliance.acme.validation_pool import ValidationPool


def test_bounded_and_slots_come_back() -> None:
    pool = ValidationPool(2)
    gate = threading.Event()
    assert pool.reserve() and pool.reserve()
    assert not pool.reserve() and pool.busy() == 2
    first = pool.submit(lambda: gate.wait(10) and None)
    pool.release()  # the second reservation lost its race: given back unused
    assert pool.busy() == 1 and pool.reserve()
    second = pool.submit(lambda: None)
    second.result(10)
    gate.set()
    first.result(10)
    assert pool.busy() == 0


def test_a_failing_job_frees_its_slot() -> None:
    pool = ValidationPool(1)
    assert pool.reserve()

    def boom() -> None:
        raise RuntimeError("bug")

    with pytest.raises(RuntimeError, match="bug"):
        pool.submit(boom).result(10)
    assert pool.busy() == 0 and pool.reserve()
    pool.release()


def test_release_never_goes_below_zero_and_size_is_checked() -> None:
    pool = ValidationPool(1)
    pool.release()
    assert pool.busy() == 0
    with pytest.raises(ValueError, match="at least 1"):
        ValidationPool(0)


def test_forked_child_gets_its_own_empty_pool() -> None:
    pool = ValidationPool(1)
    assert pool.reserve()  # held in the parent
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: the parent's slot is not ours, and our threads work
        try:
            ok = pool.reserve() and pool.submit(lambda: None).result(10) is None
            os.write(write, b"1" if ok and pool.busy() == 0 else b"0")
        finally:
            os._exit(0)
    os.close(write)
    assert os.read(read, 1) == b"1"
    os.waitpid(pid, 0)
    os.close(read)
    assert pool.busy() == 1
    pool.release()
