"""What a template may call besides its own macros: the filters, ``range`` and ``fail``.

The filters and tests are a fixed whitelist (``FILTERS``; every Jinja test), each
wrapped by :func:`guarded` so it ticks the budget and is measured; ``join``,
``replace`` and ``tojson`` are our own bounded versions. ``fail(message)`` refuses the
request with that message (``Refused``, which rendering turns into
``TemplateRefusal``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Final, NoReturn

from jinja2 import pass_context
from jinja2.runtime import Context, Undefined

from appliance.templates.guards import guard_iter
from appliance.templates.limits import (
    MAX_RANGE,
    MAX_VALUE_SIZE,
    LimitExceeded,
    check_replace,
    current_budget,
)

FILTERS: Final = frozenset({
    "abs", "capitalize", "count", "d", "default", "dictsort", "first", "float", "int", "items",
    "join", "last", "length", "list", "lower", "map", "max", "min", "reject", "rejectattr",
    "replace", "reverse", "round", "select", "selectattr", "sort", "string", "title", "tojson",
    "trim", "unique", "upper", "urlencode",
})


MAX_MESSAGE: Final = 1000


class Refused(Exception):
    """``fail(message)`` was called."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def fail(message: Any = "refused by the certificate template") -> NoReturn:
    """``fail(message)``: refuse the request, with ``message`` for the requester."""
    raise Refused(str(message)[:MAX_MESSAGE])


def bounded_range(*args: int) -> range:
    rng = range(*args)
    if len(rng) > MAX_RANGE:
        raise LimitExceeded(f"range() of {len(rng)} items; at most {MAX_RANGE}")
    return rng


def tojson(value: Any, indent: int | None = None) -> str:
    if isinstance(value, Iterator):  # e.g. the output of select/map: serialise the items
        value = list(guard_iter(value))
        current_budget().measure(value)
    if indent is not None and not 0 <= indent <= 8:
        raise ValueError("tojson: indent must be between 0 and 8")

    def refuse(obj: Any) -> Any:
        if isinstance(obj, Undefined):
            str(obj)  # StrictUndefined raises, naming the variable
        raise TypeError(f"tojson: a {type(obj).__name__} is not JSON serialisable")

    return json.dumps(value, ensure_ascii=False, allow_nan=False, indent=indent, default=refuse)


def bounded_join(value: Iterable[Any], d: str = "") -> str:
    budget = current_budget()
    separator = str(d)
    parts: list[str] = []
    total = 0
    for item in value:
        budget.tick()
        budget.measure(item)
        text = str(item)
        total += len(text) + len(separator)
        if total > MAX_VALUE_SIZE:
            raise LimitExceeded(f"join: a string longer than {MAX_VALUE_SIZE} characters")
        parts.append(text)
    budget.charge(total)
    return separator.join(parts)


def bounded_replace(s: Any, old: Any, new: Any, count: int | None = None) -> str:
    text, old_s, new_s = str(s), str(old), str(new)
    check_replace(text, old_s, new_s, count)
    return text.replace(old_s, new_s, -1 if count is None else count)


def guarded(func: Callable[..., Any]) -> Callable[..., Any]:
    """A filter or test as a context filter that ticks, measures its arguments and its result.

    Being a context filter also keeps Jinja from evaluating it at compile time,
    outside any budget.
    """
    kind = getattr(getattr(func, "jinja_pass_arg", None), "name", None)

    @pass_context
    def guarded(context: Context, value: Any, *args: Any, **kwargs: Any) -> Any:
        budget = current_budget()
        budget.tick()
        budget.measure(value)
        for arg in (*args, *kwargs.values()):
            budget.measure(arg)
        if kind == "context":
            result = func(context, value, *args, **kwargs)
        elif kind == "eval_context":
            result = func(context.eval_ctx, value, *args, **kwargs)
        elif kind == "environment":
            result = func(context.environment, value, *args, **kwargs)
        else:
            result = func(value, *args, **kwargs)
        budget.measure(result)
        return result

    guarded.__name__ = getattr(func, "__name__", "filter")
    return guarded
