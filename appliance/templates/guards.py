"""The guards the compiled template calls: every loop, concatenation and comparison.

:class:`~appliance.templates.sandbox.Rewriter` puts calls to these into the parsed
template, so the budget of :mod:`.limits` is charged where the work happens rather
than after it; ``joined`` and ``finalize`` do the same for buffered blocks and
printed output.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Final

from jinja2 import pass_context
from jinja2.runtime import Context

from appliance.templates.limits import MAX_VALUE_SIZE, LimitExceeded, current_budget


def guard_iter(iterable: Any) -> Iterator[Any]:
    budget = current_budget()
    for item in iterable:
        budget.tick()
        yield item


def guard_concat(items: list[Any]) -> str:
    budget = current_budget()
    parts = []
    total = 0
    for item in items:
        budget.measure(item)
        text = str(item)
        total += len(text)
        if total > MAX_VALUE_SIZE:
            raise LimitExceeded(f"a string longer than {MAX_VALUE_SIZE} characters")
        parts.append(text)
    budget.charge(total)
    return "".join(parts)


def guard_measure(value: Any) -> Any:
    current_budget().measure(value)
    return value


def guard_data(text: str) -> str:
    return text  # charged by finalize, like every other piece of output


def joined(parts: Iterable[str]) -> str:
    """``environment.concat``: joins the buffered output of macros, ``set`` and filter blocks."""
    chunks = list(parts)
    total = sum(len(c) for c in chunks)
    if total > MAX_VALUE_SIZE:
        raise LimitExceeded(f"a block output longer than {MAX_VALUE_SIZE} characters")
    current_budget().charge(total)
    return "".join(chunks)


@pass_context
def finalize(context: Context, value: Any) -> Any:
    current_budget().measure(value)
    return value


GUARDS: Final = {
    "guard_iter": guard_iter,
    "guard_concat": guard_concat,
    "guard_measure": guard_measure,
    "guard_data": guard_data,
}
