"""JSON from clients, read within bounds: size, nesting depth, valid Unicode, finite numbers.

Python's ``json`` takes a body nested a hundred thousand deep to a ``RecursionError``,
turns ``"\\ud800"`` into a string no database or encoder accepts, and reads ``NaN`` and
``1e999``. Every JSON body and payload a client sends (REST bodies, ACME JWS envelopes and
their payloads) is read here instead, so later code only ever sees plain, bounded values;
a violation is an ``InputError`` naming where in the document it is.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from appliance.errors import InputError

MAX_DEPTH = 16
MAX_BYTES = 1_048_576
MAX_STRING_CHARS = 65_536
_SURROGATE = re.compile("[\ud800-\udfff]")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def loads(data: bytes | str, what: str = "body", *, max_bytes: int = MAX_BYTES,
          max_depth: int = MAX_DEPTH) -> Any:
    """The JSON value of ``data``; ``InputError`` naming ``what`` (or the path inside it)."""
    if len(data) > max_bytes:
        raise InputError(what, f"larger than {max_bytes} bytes")
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError:
            raise InputError(what, "not UTF-8 text") from None
    try:
        value = json.loads(data, parse_constant=_no_constant)
    except RecursionError:
        raise InputError(what, f"nested deeper than {max_depth} levels") from None
    except ValueError as exc:  # JSONDecodeError, and ints longer than Python converts
        raise InputError(what, f"not valid JSON ({str(exc)[:100]})") from None
    check(value, what, max_depth)
    return value


def check(value: Any, what: str, max_depth: int = MAX_DEPTH) -> None:
    """Walk ``value`` (iteratively) for depth, lone surrogates, long strings, non-finite floats."""
    stack: list[tuple[Any, str, int]] = [(value, what, 0)]
    while stack:
        item, path, depth = stack.pop()
        if isinstance(item, str):
            _check_string(item, path)
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise InputError(path, "a number out of range")
        elif isinstance(item, dict | list):
            if depth >= max_depth:
                raise InputError(path, f"nested deeper than {max_depth} levels")
            if isinstance(item, dict):
                for k, v in item.items():
                    _check_string(k, f"{path}: a key")
                    stack.append((v, k[:60] if path == what else f"{path}.{k[:60]}", depth + 1))
            else:
                stack.extend((v, f"{path}[{i}]", depth + 1) for i, v in enumerate(item))


def _check_string(text: str, path: str) -> None:
    if len(text) > MAX_STRING_CHARS:
        raise InputError(path, f"longer than {MAX_STRING_CHARS} characters")
    if _SURROGATE.search(text):
        raise InputError(path, "contains a lone UTF-16 surrogate (not valid Unicode)")
