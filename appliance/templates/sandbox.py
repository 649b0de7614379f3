"""The Jinja2 sandbox certificate templates run in, and the compiler that arms it.

A template is a string (there is no loader, so ``include``, ``import`` and
``extends`` are refused when the template is compiled) rendered by an
``ImmutableSandboxedEnvironment``: no attribute starting with ``_``, no
mutation of lists and dicts, ``StrictUndefined`` (a misspelt variable is an
error naming it, not an empty string), no autoescaping. Nothing from the
process is reachable: the globals are only ``range``, ``dict``,
``namespace`` and ``fail(message)`` (:mod:`.filters`), and the filters and
tests are a fixed whitelist. Calls are whitelisted too: macros, those
globals, ``loop.cycle``/``loop.changed`` and read-only ``str``, ``dict``,
``list`` methods (``CALLABLE_METHODS``); ``str.format``, string ``%``
formatting and everything else are refused. Every operation is charged to
the budget of :mod:`.limits`.

Compiled templates are cached by source (``functools.lru_cache``); compiling
runs no template code, so it needs no budget.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any, Final, NoReturn, cast

from jinja2 import StrictUndefined, TemplateSyntaxError, nodes
from jinja2.environment import Template
from jinja2.exceptions import SecurityError
from jinja2.runtime import BlockReference, Context, LoopContext, Macro, Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace
from jinja2.visitor import NodeTransformer

from appliance.templates.filters import (
    FILTERS,
    bounded_join,
    bounded_range,
    bounded_replace,
    fail,
    guarded,
    tojson,
)
from appliance.templates.guards import GUARDS, finalize, joined
from appliance.templates.limits import (
    check_add,
    check_multiply,
    check_power,
    check_replace,
    current_budget,
)

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
FILENAME: Final = "<template>"


class Sandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox with our filters and globals, and a budget on every
    operation and call it intercepts (binary operators, calls, filters, tests)."""

    intercepted_binops = frozenset({"+", "-", "*", "/", "//", "%", "**"})

    def __init__(self) -> None:
        super().__init__(undefined=StrictUndefined, autoescape=False, finalize=finalize,
                         cache_size=0, auto_reload=False)
        defaults: dict[str, Callable[..., Any]] = dict(self.filters)
        chosen = {name: defaults[name] for name in FILTERS
                  if name not in ("tojson", "join", "replace")}
        chosen.update(tojson=tojson, join=bounded_join, replace=bounded_replace)
        self.filters = {name: guarded(func) for name, func in sorted(chosen.items())}
        default_tests = cast("dict[str, Callable[..., Any]]", self.tests)
        self.tests = {name: guarded(test) for name, test in default_tests.items()}
        self.globals = {"range": bounded_range, "dict": dict, "namespace": Namespace, "fail": fail}
        self._callable_globals = tuple(self.globals.values())
        self.concat = joined  # type: ignore[method-assign]
        for attr, guard in GUARDS.items():
            setattr(self, attr, guard)
        self._guards = tuple(GUARDS.values())

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        current_budget().tick()
        if operator == "*":
            check_multiply(left, right)
        elif operator == "**":
            check_power(left, right)
        elif operator == "+":
            check_add(left, right)
        elif operator == "%" and isinstance(left, str):
            raise SecurityError("string formatting with '%' is not available; use '~'")
        result = self.binop_table[operator](left, right)
        if isinstance(result, (str, list, tuple)):
            current_budget().charge(len(result))
        return result

    def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        budget = current_budget()
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
            check_replace(owner, args[0], args[1], count)
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


def _call_guard(name: str, args: Sequence[nodes.Node], lineno: int) -> nodes.Call:
    return nodes.Call(nodes.EnvironmentAttribute(name, lineno=lineno), list(args), [], None,
                      None, lineno=lineno)


class Rewriter(NodeTransformer):
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
def environment() -> Sandbox:
    return Sandbox()


@lru_cache(maxsize=128)
def compile_template(source: str) -> Template:
    env = environment()
    tree = Rewriter().visit(env.parse(source))
    tree.set_environment(env)
    code = env.compile(tree, filename=FILENAME)
    return env.template_class.from_code(env, code, env.make_globals(None))
