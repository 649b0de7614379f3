"""The bounds on one template render, and the budget that counts against them.

A template is configuration, but one mistake (or a requester's input meeting a
careless template) must not stall or exhaust the CA:

* source at most ``MAX_SOURCE_BYTES`` (64 KiB), output at most
  ``MAX_OUTPUT_BYTES`` (256 KiB, counted while rendering, so rendering stops
  as soon as it is exceeded);
* ``range()`` at most ``MAX_RANGE`` items;
* a step budget: every loop iteration (each ``for`` iterable is wrapped when
  the template is compiled), call, filter, test and arithmetic operation is
  a step; more than ``MAX_STEPS`` stops the render, and so does passing the
  wall-clock limit (``time_limit``, default ``DEFAULT_TIME_LIMIT`` s), which
  is checked at every step. The step cap makes "this loop is too long"
  deterministic; the clock catches slow steps;
* a size budget: no single value made by ``+``, ``*``, ``~``, a filter, a
  method or a macro may exceed ``MAX_VALUE_SIZE`` (256 Ki characters or
  items), checked *before* the allocation for ``*`` and ``**`` (ints are
  kept under ``MAX_INT_BITS``) and ``str.replace``; values are measured
  (with an early exit) before they are printed, compared, joined or
  serialised, so a structure that shares references (``[x, x]`` nested 40
  times) cannot expand; and everything produced, printed text and template
  data included, counts against ``MAX_WORK`` per render, which bounds the
  memory a render can use.

What is not bounded: one Python-level operation on values within these
limits (a sort of 256 Ki items, say) runs to completion before the next
check; the limits keep every such operation small.

Every render gets a fresh :class:`Budget` in a ``ContextVar`` (``BUDGET``), so
concurrent renders in several threads do not share one.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import ItemsView, KeysView, Mapping, Sequence, ValuesView
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any, Final

from jinja2.runtime import Undefined
from jinja2.utils import Namespace

MAX_SOURCE_BYTES: Final = 64 * 1024
MAX_OUTPUT_BYTES: Final = 256 * 1024
MAX_RANGE: Final = 10_000
MAX_STEPS: Final = 100_000
MAX_VALUE_SIZE: Final = 256 * 1024
MAX_WORK: Final = 16 * 1024 * 1024
MAX_INT_BITS: Final = 4096
DEFAULT_TIME_LIMIT: Final = 1.0
MAX_TIME_LIMIT: Final = 30.0


class LimitExceeded(Exception):
    """A render went over one of its bounds."""


@dataclass
class Budget:
    """What one render has used so far; every helper of the sandbox charges it."""

    deadline: float
    time_limit: float
    steps: int = 0
    work: int = 0

    def tick(self) -> None:
        self.steps += 1
        if self.steps > MAX_STEPS:
            raise LimitExceeded(
                f"more than {MAX_STEPS} steps (loop iterations, calls, filters, operations)")
        self.check_time()

    def check_time(self) -> None:
        if time.monotonic() > self.deadline:
            raise LimitExceeded(f"rendering took longer than {self.time_limit:g} s")

    def charge(self, amount: int) -> None:
        self.work += amount
        if self.work > MAX_WORK:
            raise LimitExceeded(f"produced more than {MAX_WORK} characters in all")

    def measure(self, value: Any) -> int:
        size = measure_value(value)
        self.charge(size)
        return size


BUDGET: contextvars.ContextVar[Budget | None] = contextvars.ContextVar(
    "appliance_template_budget", default=None)


def current_budget() -> Budget:
    budget = BUDGET.get()
    if budget is None:  # only reachable by using the environment outside render_text
        raise RuntimeError("template helpers used outside a render")
    return budget


_CONTAINERS: Final = (Sequence, AbstractSet, KeysView, ValuesView, ItemsView)


def measure_value(value: Any) -> int:
    """The value's size as text, roughly; ``LimitExceeded`` past ``MAX_VALUE_SIZE``.

    Counts every element reached, so shared references count each time they
    are reached (as they would when printed), and stops as soon as the limit
    is passed: the cost is at most ``MAX_VALUE_SIZE`` steps whatever the value.
    """
    total = 0
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, Undefined):  # before anything that would touch it
            total += 1
        elif isinstance(item, str):
            total += len(item) + 2
        elif item is None or isinstance(item, (bool, float)):
            total += 6
        elif isinstance(item, int):
            total += item.bit_length() // 3 + 2
        elif isinstance(item, Namespace):
            attrs = item._Namespace__attrs  # what repr() prints
            total += 2 + 2 * len(attrs)
            if total <= MAX_VALUE_SIZE:
                stack.extend(attrs.keys())
                stack.extend(attrs.values())
        elif isinstance(item, Mapping):
            total += 2 + 2 * len(item)
            if total <= MAX_VALUE_SIZE:
                stack.extend(item.keys())
                stack.extend(item.values())
        elif isinstance(item, _CONTAINERS) and not isinstance(item, range):
            total += 2 + len(item)
            if total <= MAX_VALUE_SIZE:
                stack.extend(item)
        else:  # Undefined, generators, macros, loop contexts, ranges: short reprs
            total += 1
        if total > MAX_VALUE_SIZE:
            raise LimitExceeded(f"a value larger than {MAX_VALUE_SIZE} characters or items")
    return total


def _is_int(value: Any) -> bool:
    return isinstance(value, int)


def check_multiply(left: Any, right: Any) -> None:
    for seq, n in ((left, right), (right, left)):
        if isinstance(seq, (str, list, tuple)) and _is_int(n):
            if len(seq) * max(n, 0) > MAX_VALUE_SIZE:
                raise LimitExceeded(f"'*' would make a value larger than {MAX_VALUE_SIZE}")
            return
    if _is_int(left) and _is_int(right) and (
            left.bit_length() + right.bit_length() > MAX_INT_BITS):
        raise LimitExceeded(f"'*' would make an integer larger than {MAX_INT_BITS} bits")


def check_power(left: Any, right: Any) -> None:
    if _is_int(left) and _is_int(right) and right > 0 and (
            max(left.bit_length(), 1) * right > MAX_INT_BITS):
        raise LimitExceeded(f"'**' would make an integer larger than {MAX_INT_BITS} bits")


def check_add(left: Any, right: Any) -> None:
    if isinstance(left, (str, list, tuple)) and isinstance(right, (str, list, tuple)) and (
            len(left) + len(right) > MAX_VALUE_SIZE):
        raise LimitExceeded(f"'+' would make a value larger than {MAX_VALUE_SIZE}")


def check_replace(text: str, old: str, new: str, count: int | None = None) -> None:
    hits = (text.count(old) if old else len(text) + 1)
    if count is not None and count >= 0:
        hits = min(hits, count)
    if len(text) + hits * max(0, len(new) - len(old)) > MAX_VALUE_SIZE:
        raise LimitExceeded(f"replace: a string longer than {MAX_VALUE_SIZE} characters")
