"""Rendering a certificate template into a validated ``CertificateDescription``.

The template runs in the sandbox of :mod:`.sandbox` under the bounds of
:mod:`.limits`; its output must be one JSON object, parsed (duplicate keys, NaN
and Infinity refused) into ``CertificateDescription``. Every failure becomes a
``TemplateError`` naming the template and, when known, the line where it was, or a
``TemplateRefusal`` when the template called ``fail()``.
"""

from __future__ import annotations

import json
import time
import traceback
import types
from collections.abc import Iterator, Mapping
from typing import Any, NoReturn

from jinja2 import TemplateSyntaxError, UndefinedError
from jinja2.exceptions import SecurityError
from pydantic import ValidationError

from appliance.templates.errors import TemplateError, TemplateInputError, TemplateRefusal
from appliance.templates.filters import MAX_MESSAGE, Refused
from appliance.templates.inputs import TemplateInput, checked_variables
from appliance.templates.limits import (
    BUDGET,
    DEFAULT_TIME_LIMIT,
    MAX_OUTPUT_BYTES,
    MAX_SOURCE_BYTES,
    MAX_TIME_LIMIT,
    Budget,
    LimitExceeded,
)
from appliance.templates.model import CertificateDescription
from appliance.templates.sandbox import FILENAME, compile_template, environment


def _check_source(source: str, name: str) -> None:
    if not isinstance(source, str):
        raise TemplateError(name, "the template source must be a string")
    size = len(source.encode("utf-8", "surrogatepass"))
    if size > MAX_SOURCE_BYTES:
        raise TemplateError(name, f"the template is {size} bytes; at most {MAX_SOURCE_BYTES}")


def _template_line(exc: BaseException) -> int | None:
    line = None
    for frame, lineno in traceback.walk_tb(exc.__traceback__):
        if frame.f_code.co_filename == FILENAME:
            line = lineno
    return line


def _as_template_error(name: str, exc: Exception) -> TemplateError:
    line = _template_line(exc)
    if isinstance(exc, TemplateSyntaxError):
        return TemplateError(name, f"syntax error: {exc.message}", exc.lineno)
    if isinstance(exc, UndefinedError):
        return TemplateError(name, f"undefined: {exc.message}", line)
    if isinstance(exc, SecurityError):
        return TemplateError(name, f"not allowed: {exc}", line)
    if isinstance(exc, LimitExceeded):
        return TemplateError(name, f"limit exceeded: {exc}", line)
    if isinstance(exc, RecursionError):
        return TemplateError(name, "recursion too deep (a macro calling itself without end?)",
                             line)
    if isinstance(exc, MemoryError):
        return TemplateError(name, "out of memory", line)
    return TemplateError(name, f"{type(exc).__name__}: {str(exc)[:MAX_MESSAGE]}", line)


def check_template(name: str, source: str) -> None:
    """Compile without rendering: ``TemplateError`` for a syntax error or a refused construct.

    For checking a template when it is saved; rendering checks the rest.
    """
    _check_source(source, name)
    try:
        compile_template(source)
    except Exception as exc:
        raise _as_template_error(name, exc) from None


def render_text(name: str, source: str, variables: TemplateInput | Mapping[str, Any], *,
                time_limit: float = DEFAULT_TIME_LIMIT) -> str:
    """The template's raw output (for previews); ``render`` parses it."""
    _check_source(source, name)
    if not 0 < time_limit <= MAX_TIME_LIMIT:
        raise ValueError(f"time_limit must be in (0, {MAX_TIME_LIMIT}] seconds")
    if isinstance(variables, TemplateInput):
        context_vars = variables.variables()
    else:
        context_vars = checked_variables(variables)
    clash = set(context_vars) & set(environment().globals)
    if clash:
        raise TemplateInputError(f"variables may not be named {', '.join(sorted(clash))}")

    try:
        template = compile_template(source)  # outside the budget: cached, and runs no template code
    except Exception as exc:
        raise _as_template_error(name, exc) from None

    budget = Budget(deadline=time.monotonic() + time_limit, time_limit=time_limit)
    reset = BUDGET.set(budget)
    chunks: list[str] = []
    generator: Iterator[str] | None = None
    try:
        generator = template.generate(context_vars)
        size = 0
        for chunk in generator:
            size += len(chunk.encode("utf-8", "surrogatepass"))
            if size > MAX_OUTPUT_BYTES:
                raise LimitExceeded(f"output longer than {MAX_OUTPUT_BYTES} bytes")
            budget.check_time()
            chunks.append(chunk)
    except Refused as exc:
        raise TemplateRefusal(name, exc.message) from None
    except Exception as exc:
        raise _as_template_error(name, exc) from None
    finally:
        if generator is not None and isinstance(generator, types.GeneratorType):
            generator.close()
        BUDGET.reset(reset)
    return "".join(chunks)


def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _no_constants(token: str) -> NoReturn:
    raise ValueError(f"{token} is not valid JSON")


def _schema_message(error: ValidationError) -> str:
    parts = []
    for e in error.errors(include_url=False)[:10]:
        loc = ".".join(str(p) for p in e["loc"]) or "(description)"
        msg = str(e["msg"]).removeprefix("Value error, ")
        value = e.get("input")
        if e["type"] in ("literal_error", "string_pattern_mismatch", "enum") and isinstance(
                value, str) and len(value) <= 80:
            msg += f" (got {value!r})"
        parts.append(f"{loc}: {msg}")
    more = error.error_count() - len(parts)
    return "schema violation: " + "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def parse_description(text: str, *, name: str = "<template>",
                      allow_ca: bool = False) -> CertificateDescription:
    """A template's output (JSON text) as a validated ``CertificateDescription``."""
    if not text.strip():
        raise TemplateError(name, "the template produced no output")
    try:
        data = json.loads(text, object_pairs_hook=_object_without_duplicates,
                          parse_constant=_no_constants)
    except json.JSONDecodeError as exc:
        raise TemplateError(name, f"the output is not valid JSON: {exc.msg} at line "
                                  f"{exc.lineno} column {exc.colno}") from None
    except (ValueError, RecursionError) as exc:
        raise TemplateError(name, f"the output is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise TemplateError(name, f"the output must be a JSON object, not {type(data).__name__}")
    try:
        return CertificateDescription.model_validate(data, context={"allow_ca": allow_ca})
    except ValidationError as exc:
        raise TemplateError(name, _schema_message(exc)) from None


def render(name: str, source: str, variables: TemplateInput | Mapping[str, Any], *,
           allow_ca: bool = False,
           time_limit: float = DEFAULT_TIME_LIMIT) -> CertificateDescription:
    """Render template ``name`` (``source``) with ``variables`` into a certificate description.

    ``TemplateRefusal`` if the template called ``fail()``; ``TemplateError``
    for anything else that went wrong (naming the template, and the line
    where the template was when it failed, if known).
    """
    text = render_text(name, source, variables, time_limit=time_limit)
    return parse_description(text, name=name, allow_ca=allow_ca)
