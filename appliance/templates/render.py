"""Rendering certificate templates in a Jinja2 sandbox, with bounded size, work and time.

A template is a string (there is no loader, so ``include``, ``import`` and
``extends`` are refused when the template is compiled) rendered by an
``ImmutableSandboxedEnvironment``: no attribute starting with ``_``, no
mutation of lists and dicts, ``StrictUndefined`` (a misspelt variable is an
error naming it, not an empty string), no autoescaping. Nothing from the
process is reachable: the globals are only ``range``, ``dict``,
``namespace`` and ``fail(message)`` (which refuses the request with that
message: ``TemplateRefusal``), and the filters and tests are a fixed
whitelist (``FILTERS``; every Jinja test). Calls are whitelisted too: macros,
those globals, ``loop.cycle``/``loop.changed`` and read-only ``str``,
``dict``, ``list`` methods (``CALLABLE_METHODS``); ``str.format``, string
``%`` formatting and everything else are refused.

The output must be one JSON object, parsed (duplicate keys, NaN and
Infinity refused) into ``CertificateDescription``.

Bounds -- a template is configuration, but one mistake (or a requester's
input meeting a careless template) must not stall or exhaust the CA:

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

Compiled templates are cached by source (``functools.lru_cache``); every
render gets a fresh budget (a ``ContextVar``, so concurrent renders in
several threads do not share one).
"""

from __future__ import annotations

import contextvars
import json
import time
import traceback
import types
from collections.abc import (
    Callable,
    ItemsView,
    Iterable,
    Iterator,
    KeysView,
    Mapping,
    Sequence,
    ValuesView,
)
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final, NoReturn, cast

from jinja2 import StrictUndefined, TemplateSyntaxError, UndefinedError, nodes, pass_context
from jinja2.environment import Template
from jinja2.exceptions import SecurityError
from jinja2.runtime import BlockReference, Context, LoopContext, Macro, Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace
from jinja2.visitor import NodeTransformer
from pydantic import ValidationError

from appliance.templates.errors import TemplateError, TemplateInputError, TemplateRefusal
from appliance.templates.inputs import TemplateInput, checked_variables
from appliance.templates.model import CertificateDescription
from appliance.templates.shipped import builtin_templates

__all__ = [
    "CALLABLE_METHODS",
    "DEFAULT_TIME_LIMIT",
    "FILTERS",
    "MAX_INT_BITS",
    "MAX_OUTPUT_BYTES",
    "MAX_RANGE",
    "MAX_SOURCE_BYTES",
    "MAX_STEPS",
    "MAX_VALUE_SIZE",
    "MAX_WORK",
    "CertificateDescription",
    "TemplateError",
    "TemplateInput",
    "TemplateRefusal",
    "builtin_templates",
    "check_template",
    "parse_description",
    "render",
    "render_text",
]

MAX_SOURCE_BYTES: Final = 64 * 1024
MAX_OUTPUT_BYTES: Final = 256 * 1024
MAX_RANGE: Final = 10_000
MAX_STEPS: Final = 100_000
MAX_VALUE_SIZE: Final = 256 * 1024
MAX_WORK: Final = 16 * 1024 * 1024
MAX_INT_BITS: Final = 4096
DEFAULT_TIME_LIMIT: Final = 1.0
MAX_TIME_LIMIT: Final = 30.0

FILTERS: Final = frozenset({
    "abs", "capitalize", "count", "d", "default", "dictsort", "first", "float", "int", "items",
    "join", "last", "length", "list", "lower", "map", "max", "min", "reject", "rejectattr",
    "replace", "reverse", "round", "select", "selectattr", "sort", "string", "title", "tojson",
    "trim", "unique", "upper", "urlencode",
})
CALLABLE_METHODS: Final[dict[type, frozenset[str]]] = {
    str: frozenset({
        "capitalize", "casefold", "count", "endswith", "find", "index", "isalnum", "isalpha",
        "isascii", "isdecimal", "isdigit", "islower", "isnumeric", "isspace", "istitle",
        "isupper", "lower", "lstrip", "partition", "removeprefix", "removesuffix", "replace",
        "rfind", "rindex", "rpartition", "rsplit", "rstrip", "split", "splitlines",
        "startswith", "strip", "swapcase", "title", "upper",
    }),
    dict: frozenset({"get", "items", "keys", "values"}),
    list: frozenset({"count", "index"}),
    tuple: frozenset({"count", "index"}),
}
_LOOP_METHODS: Final = frozenset({"cycle", "changed"})
_FILENAME: Final = "<template>"
_MAX_MESSAGE: Final = 1000


# -- the per-render budget -------------------------------------------------------------------


class _LimitExceeded(Exception):
    """A render went over one of its bounds."""


class _Refused(Exception):
    """``fail(message)`` was called."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass
class _Budget:
    deadline: float
    time_limit: float
    steps: int = 0
    work: int = 0

    def tick(self) -> None:
        self.steps += 1
        if self.steps > MAX_STEPS:
            raise _LimitExceeded(
                f"more than {MAX_STEPS} steps (loop iterations, calls, filters, operations)")
        self.check_time()

    def check_time(self) -> None:
        if time.monotonic() > self.deadline:
            raise _LimitExceeded(f"rendering took longer than {self.time_limit:g} s")

    def charge(self, amount: int) -> None:
        self.work += amount
        if self.work > MAX_WORK:
            raise _LimitExceeded(f"produced more than {MAX_WORK} characters in all")

    def measure(self, value: Any) -> int:
        size = _measure(value)
        self.charge(size)
        return size


_BUDGET: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar(
    "appliance_template_budget", default=None)


def _budget() -> _Budget:
    budget = _BUDGET.get()
    if budget is None:  # only reachable by using the environment outside render_text
        raise RuntimeError("template helpers used outside a render")
    return budget


_CONTAINERS: Final = (Sequence, AbstractSet, KeysView, ValuesView, ItemsView)


def _measure(value: Any) -> int:
    """The value's size as text, roughly; ``_LimitExceeded`` past ``MAX_VALUE_SIZE``.

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
            raise _LimitExceeded(f"a value larger than {MAX_VALUE_SIZE} characters or items")
    return total


# -- guards the compiled template calls ------------------------------------------------------


def _guard_iter(iterable: Any) -> Iterator[Any]:
    budget = _budget()
    for item in iterable:
        budget.tick()
        yield item


def _guard_concat(items: list[Any]) -> str:
    budget = _budget()
    parts = []
    total = 0
    for item in items:
        budget.measure(item)
        text = str(item)
        total += len(text)
        if total > MAX_VALUE_SIZE:
            raise _LimitExceeded(f"a string longer than {MAX_VALUE_SIZE} characters")
        parts.append(text)
    budget.charge(total)
    return "".join(parts)


def _guard_measure(value: Any) -> Any:
    _budget().measure(value)
    return value


def _guard_data(text: str) -> str:
    return text  # charged by _finalize, like every other piece of output


def _joined(parts: Iterable[str]) -> str:
    """``environment.concat``: joins the buffered output of macros, ``set`` and filter blocks."""
    chunks = list(parts)
    total = sum(len(c) for c in chunks)
    if total > MAX_VALUE_SIZE:
        raise _LimitExceeded(f"a block output longer than {MAX_VALUE_SIZE} characters")
    _budget().charge(total)
    return "".join(chunks)


@pass_context
def _finalize(context: Context, value: Any) -> Any:
    _budget().measure(value)
    return value


_GUARDS: Final = {
    "guard_iter": _guard_iter,
    "guard_concat": _guard_concat,
    "guard_measure": _guard_measure,
    "guard_data": _guard_data,
}


# -- globals and filters ---------------------------------------------------------------------


def _fail(message: Any = "refused by the certificate template") -> NoReturn:
    """``fail(message)``: refuse the request, with ``message`` for the requester."""
    raise _Refused(str(message)[:_MAX_MESSAGE])


def _range(*args: int) -> range:
    rng = range(*args)
    if len(rng) > MAX_RANGE:
        raise _LimitExceeded(f"range() of {len(rng)} items; at most {MAX_RANGE}")
    return rng


def _tojson(value: Any, indent: int | None = None) -> str:
    if isinstance(value, Iterator):  # e.g. the output of select/map: serialise the items
        value = list(_guard_iter(value))
        _budget().measure(value)
    if indent is not None and not 0 <= indent <= 8:
        raise ValueError("tojson: indent must be between 0 and 8")

    def refuse(obj: Any) -> Any:
        if isinstance(obj, Undefined):
            str(obj)  # StrictUndefined raises, naming the variable
        raise TypeError(f"tojson: a {type(obj).__name__} is not JSON serialisable")

    return json.dumps(value, ensure_ascii=False, allow_nan=False, indent=indent, default=refuse)


def _join(value: Iterable[Any], d: str = "") -> str:
    budget = _budget()
    separator = str(d)
    parts: list[str] = []
    total = 0
    for item in value:
        budget.tick()
        budget.measure(item)
        text = str(item)
        total += len(text) + len(separator)
        if total > MAX_VALUE_SIZE:
            raise _LimitExceeded(f"join: a string longer than {MAX_VALUE_SIZE} characters")
        parts.append(text)
    budget.charge(total)
    return separator.join(parts)


def _check_replace(text: str, old: str, new: str, count: int | None = None) -> None:
    hits = (text.count(old) if old else len(text) + 1)
    if count is not None and count >= 0:
        hits = min(hits, count)
    if len(text) + hits * max(0, len(new) - len(old)) > MAX_VALUE_SIZE:
        raise _LimitExceeded(f"replace: a string longer than {MAX_VALUE_SIZE} characters")


def _replace(s: Any, old: Any, new: Any, count: int | None = None) -> str:
    text, old_s, new_s = str(s), str(old), str(new)
    _check_replace(text, old_s, new_s, count)
    return text.replace(old_s, new_s, -1 if count is None else count)


def _guarded(func: Callable[..., Any]) -> Callable[..., Any]:
    """A filter or test as a context filter that ticks, measures its arguments and its result.

    Being a context filter also keeps Jinja from evaluating it at compile time,
    outside any budget.
    """
    kind = getattr(getattr(func, "jinja_pass_arg", None), "name", None)

    @pass_context
    def guarded(context: Context, value: Any, *args: Any, **kwargs: Any) -> Any:
        budget = _budget()
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


# -- the environment -------------------------------------------------------------------------


class _Sandbox(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"+", "-", "*", "/", "//", "%", "**"})

    def __init__(self) -> None:
        super().__init__(undefined=StrictUndefined, autoescape=False, finalize=_finalize,
                         cache_size=0, auto_reload=False)
        defaults: dict[str, Callable[..., Any]] = dict(self.filters)
        chosen = {name: defaults[name] for name in FILTERS
                  if name not in ("tojson", "join", "replace")}
        chosen.update(tojson=_tojson, join=_join, replace=_replace)
        self.filters = {name: _guarded(func) for name, func in sorted(chosen.items())}
        default_tests = cast("dict[str, Callable[..., Any]]", self.tests)
        self.tests = {name: _guarded(test) for name, test in default_tests.items()}
        self.globals = {"range": _range, "dict": dict, "namespace": Namespace, "fail": _fail}
        self._callable_globals = tuple(self.globals.values())
        self.concat = _joined  # type: ignore[method-assign]
        for attr, guard in _GUARDS.items():
            setattr(self, attr, guard)
        self._guards = tuple(_GUARDS.values())

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        _budget().tick()
        if operator == "*":
            _check_multiply(left, right)
        elif operator == "**":
            _check_power(left, right)
        elif operator == "+":
            _check_add(left, right)
        elif operator == "%" and isinstance(left, str):
            raise SecurityError("string formatting with '%' is not available; use '~'")
        result = self.binop_table[operator](left, right)
        if isinstance(result, (str, list, tuple)):
            _budget().charge(len(result))
        return result

    def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        budget = _budget()
        budget.tick()
        if any(obj is guard for guard in self._guards):
            return context.call(obj, *args, **kwargs)
        if isinstance(obj, Undefined):
            str(obj)  # raises what is wrong: the undefined name, or the unsafe attribute
        if not self._may_call(obj):
            raise SecurityError(f"calling {_describe(obj)} is not allowed in a template")
        for arg in args:
            budget.measure(arg)
        for key, arg in kwargs.items():
            if key not in ("_loop_vars", "_block_vars"):  # Jinja's own scoping arguments
                budget.measure(arg)
        owner = getattr(obj, "__self__", None)
        if getattr(obj, "__name__", None) == "replace" and isinstance(owner, str) and len(
                args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
            count = args[2] if len(args) > 2 and isinstance(args[2], int) else None
            _check_replace(owner, args[0], args[1], count)
        result = context.call(obj, *args, **kwargs)
        budget.measure(result)
        return result

    def _may_call(self, obj: Any) -> bool:
        if isinstance(obj, (Macro, BlockReference)):
            return True
        if any(obj is g for g in self._callable_globals):
            return True
        owner = getattr(obj, "__self__", None)
        name = getattr(obj, "__name__", "")
        if isinstance(obj, types.BuiltinMethodType):
            return name in CALLABLE_METHODS.get(type(owner), frozenset())
        if isinstance(obj, types.MethodType) and isinstance(owner, LoopContext):
            return name in _LOOP_METHODS
        return False


def _describe(obj: Any) -> str:
    name = getattr(obj, "__name__", None)
    owner = getattr(obj, "__self__", None)
    if name and owner is not None and not isinstance(owner, types.ModuleType):
        return f"{type(owner).__name__}.{name}()"
    return f"{name}()" if name else f"a {type(obj).__name__}"


def _is_int(value: Any) -> bool:
    return isinstance(value, int)


def _check_multiply(left: Any, right: Any) -> None:
    for seq, n in ((left, right), (right, left)):
        if isinstance(seq, (str, list, tuple)) and _is_int(n):
            if len(seq) * max(n, 0) > MAX_VALUE_SIZE:
                raise _LimitExceeded(f"'*' would make a value larger than {MAX_VALUE_SIZE}")
            return
    if _is_int(left) and _is_int(right) and (
            left.bit_length() + right.bit_length() > MAX_INT_BITS):
        raise _LimitExceeded(f"'*' would make an integer larger than {MAX_INT_BITS} bits")


def _check_power(left: Any, right: Any) -> None:
    if _is_int(left) and _is_int(right) and right > 0 and (
            max(left.bit_length(), 1) * right > MAX_INT_BITS):
        raise _LimitExceeded(f"'**' would make an integer larger than {MAX_INT_BITS} bits")


def _check_add(left: Any, right: Any) -> None:
    if isinstance(left, (str, list, tuple)) and isinstance(right, (str, list, tuple)) and (
            len(left) + len(right) > MAX_VALUE_SIZE):
        raise _LimitExceeded(f"'+' would make a value larger than {MAX_VALUE_SIZE}")


def _call_guard(name: str, args: Sequence[nodes.Node], lineno: int) -> nodes.Call:
    return nodes.Call(nodes.EnvironmentAttribute(name, lineno=lineno), list(args), [], None,
                      None, lineno=lineno)


class _Rewriter(NodeTransformer):
    """Puts the guards into the parsed template and refuses what a template may not do."""

    def visit_For(self, node: nodes.For) -> nodes.Node:
        if node.recursive:
            raise TemplateSyntaxError("recursive for-loops are not supported", node.lineno)
        node = cast(nodes.For, self.generic_visit(node))
        node.iter = _call_guard("guard_iter", [node.iter], node.lineno)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        node = cast(nodes.Concat, self.generic_visit(node))
        return _call_guard("guard_concat", [nodes.List(node.nodes, lineno=node.lineno)],
                           node.lineno)

    def visit_Compare(self, node: nodes.Compare) -> nodes.Node:
        node = cast(nodes.Compare, self.generic_visit(node))
        node.expr = _call_guard("guard_measure", [node.expr], node.lineno)
        for operand in node.ops:
            operand.expr = _call_guard("guard_measure", [operand.expr], node.lineno)
        return node

    def visit_TemplateData(self, node: nodes.TemplateData) -> nodes.Node:
        return _call_guard("guard_data", [nodes.Const(node.data, lineno=node.lineno)],
                           node.lineno)

    def _refuse(self, node: nodes.Node, what: str) -> NoReturn:
        raise TemplateSyntaxError(f"{what} is not available in certificate templates",
                                  node.lineno)

    def visit_Include(self, node: nodes.Include) -> NoReturn:
        self._refuse(node, "'include'")

    def visit_Import(self, node: nodes.Import) -> NoReturn:
        self._refuse(node, "'import'")

    def visit_FromImport(self, node: nodes.FromImport) -> NoReturn:
        self._refuse(node, "'from ... import'")

    def visit_Extends(self, node: nodes.Extends) -> NoReturn:
        self._refuse(node, "'extends'")

    def visit_ScopedEvalContextModifier(self, node: nodes.ScopedEvalContextModifier) -> NoReturn:
        self._refuse(node, "'autoescape'")

    def visit_EvalContextModifier(self, node: nodes.EvalContextModifier) -> NoReturn:
        self._refuse(node, "'autoescape'")


@lru_cache(maxsize=1)
def _environment() -> _Sandbox:
    return _Sandbox()


@lru_cache(maxsize=128)
def _compile(source: str) -> Template:
    env = _environment()
    tree = _Rewriter().visit(env.parse(source))
    tree.set_environment(env)
    code = env.compile(tree, filename=_FILENAME)
    return env.template_class.from_code(env, code, env.make_globals(None))


# -- entry points ----------------------------------------------------------------------------


def _check_source(source: str, name: str) -> None:
    if not isinstance(source, str):
        raise TemplateError(name, "the template source must be a string")
    size = len(source.encode("utf-8", "surrogatepass"))
    if size > MAX_SOURCE_BYTES:
        raise TemplateError(name, f"the template is {size} bytes; at most {MAX_SOURCE_BYTES}")


def _template_line(exc: BaseException) -> int | None:
    line = None
    for frame, lineno in traceback.walk_tb(exc.__traceback__):
        if frame.f_code.co_filename == _FILENAME:
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
    if isinstance(exc, _LimitExceeded):
        return TemplateError(name, f"limit exceeded: {exc}", line)
    if isinstance(exc, RecursionError):
        return TemplateError(name, "recursion too deep (a macro calling itself without end?)",
                             line)
    if isinstance(exc, MemoryError):
        return TemplateError(name, "out of memory", line)
    return TemplateError(name, f"{type(exc).__name__}: {str(exc)[:_MAX_MESSAGE]}", line)


def check_template(name: str, source: str) -> None:
    """Compile without rendering: ``TemplateError`` for a syntax error or a refused construct.

    For checking a template when it is saved; rendering checks the rest.
    """
    _check_source(source, name)
    try:
        _compile(source)
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
    clash = set(context_vars) & set(_environment().globals)
    if clash:
        raise TemplateInputError(f"variables may not be named {', '.join(sorted(clash))}")

    try:
        template = _compile(source)  # outside the budget: cached, and runs no template code
    except Exception as exc:
        raise _as_template_error(name, exc) from None

    budget = _Budget(deadline=time.monotonic() + time_limit, time_limit=time_limit)
    reset = _BUDGET.set(budget)
    chunks: list[str] = []
    generator: Iterator[str] | None = None
    try:
        generator = template.generate(context_vars)
        size = 0
        for chunk in generator:
            size += len(chunk.encode("utf-8", "surrogatepass"))
            if size > MAX_OUTPUT_BYTES:
                raise _LimitExceeded(f"output longer than {MAX_OUTPUT_BYTES} bytes")
            budget.check_time()
            chunks.append(chunk)
    except _Refused as exc:
        raise TemplateRefusal(name, exc.message) from None
    except Exception as exc:
        raise _as_template_error(name, exc) from None
    finally:
        if generator is not None and isinstance(generator, types.GeneratorType):
            generator.close()
        _BUDGET.reset(reset)
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
