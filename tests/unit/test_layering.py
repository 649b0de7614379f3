"""Which way imports may point between the rooms of the appliance (DESIGN.md, issue 13).

A room is the first package under ``appliance/`` (``policy``, ``acme``, ...) or a top-level
module (``config``, ``errors``, ...). The rooms stand in layers, written once below in
``LAYERS``, top to bottom: a room may import itself and rooms in LOWER layers only, never a
room above it nor a room beside it in its own layer (unless that pair is listed in
``ALLOWED_PAIRS`` with a reason). The rule is checked by reading every module with ``ast``
(nothing is imported, so a bad import cannot hide behind an import error), and every
``appliance`` import counts: at module level, inside functions (a lazy import is still a
dependency), under ``if TYPE_CHECKING:`` (a type is still a dependency), relative ones, and
``importlib.import_module("appliance...")`` with a literal name.

Also: only ``ceremony`` itself and the CLI import ``appliance.ceremony`` (a ceremony is an
operator's act, never a step of the online service), and no two modules of one room import
each other at module level, directly or round a longer circle.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parents[2] / "appliance"
ROOT = "appliance"

# Top to bottom. A room imports only rooms in layers below its own (plus itself).
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("layer 15 (entry points)", ("__main__",)),
    ("layer 14 (CLI)", ("cli",)),
    ("layer 13 (web front)", ("web",)),
    ("layer 12 (admin)", ("ops",)),
    ("layer 11 (protocols)", ("acme",)),
    ("layer 10.5 (registration authorities)", ("ra",)),
    ("layer 10 (credentials)", ("provisioners",)),
    ("layer 9 (pipeline, revocation, ceremonies)", ("issuance", "revocation", "ceremony")),
    ("layer 8 (core rules)", ("ocsp", "templates", "policy", "inventory")),
    ("layer 7.5 (cluster state: heartbeats, status)", ("cluster",)),
    ("layer 7 (CA registry)", ("ca",)),
    ("layer 6 (runtime)", ("runtime",)),
    ("layer 5.5 (FIPS-style mode, self-tests)", ("fips",)),
    ("layer 5 (audit log)", ("audit",)),
    ("layer 4 (token, database)", ("hsm", "store")),
    ("layer 3 (X.509 vocabulary, the signing gate, the algorithm table)", ("x509",)),
    ("layer 2 (lint gate)", ("lint",)),
    ("layer 1 (configuration)", ("config_doc", "config")),
    ("layer 0.5 (helpers of the ground floor)", (
        "bounded_json", "strict_yaml", "durations", "hosts",
    )),
    ("layer 0 (ground floor)", (
        "__init__",  # appliance/__init__.py itself: only __version__
        "errors", "logs", "rfc3339", "deadline", "secretfile", "metrics", "background",
    )),
)

# (importing room, imported room) in the same layer -> why that import is right. Each pair
# must be in use (a stale exception fails), and allows that one direction only.
ALLOWED_PAIRS: dict[tuple[str, str], str] = {
    ("config_doc", "config"): "config_doc documents (and shows) the configuration model",
}

# The only rooms that may import appliance.ceremony.
CEREMONY_IMPORTERS = frozenset({"ceremony", "cli"})


@dataclass(frozen=True)
class Import:
    """One ``appliance`` import: where it is written and which module it reaches."""

    path: str  # the importing file, relative to the repository
    module: str  # the importing module, dotted
    line: int
    target: str  # the imported module, dotted, as deep as a module file exists
    module_level: bool  # runs when the importing module is imported (not inside a function)

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def room_of(module: str) -> str:
    """``appliance.policy.engine`` -> ``policy``; ``appliance.config`` -> ``config``;
    ``appliance`` (the package's own ``__init__``) -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _is_ours(name: str) -> bool:
    return name == ROOT or name.startswith(ROOT + ".")


class _Collector(ast.NodeVisitor):
    """Every ``appliance`` import in one module, with whether it runs at module level."""

    def __init__(self, path: str, module: str, is_package: bool, modules: frozenset[str]):
        self.path = path
        self.module = module
        self.package = module if is_package else module.rpartition(".")[0]
        self.modules = modules
        self.depth = 0  # functions entered
        self.found: list[Import] = []

    def _add(self, node: ast.AST, target: str) -> None:
        line = getattr(node, "lineno", 0)
        self.found.append(Import(self.path, self.module, line, target, self.depth == 0))

    def _resolve(self, base: str, name: str) -> str:
        candidate = f"{base}.{name}"
        return candidate if candidate in self.modules else base

    def _deepest(self, dotted: str) -> str:
        while dotted not in self.modules and "." in dotted:
            dotted = dotted.rpartition(".")[0]
        return dotted

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    # ast.NodeVisitor dispatches on these names.
    visit_FunctionDef = _function
    visit_AsyncFunctionDef = _function
    visit_Lambda = _function

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if _is_ours(alias.name):
                self._add(node, self._deepest(alias.name))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base_parts = self.package.split(".")
            base_parts = base_parts[: len(base_parts) - (node.level - 1)]
            base = ".".join(base_parts + ([node.module] if node.module else []))
        else:
            base = node.module or ""
        if _is_ours(base):
            for alias in node.names:
                target = base if alias.name == "*" else self._resolve(base, alias.name)
                self._add(node, self._deepest(target))

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if name == "import_module" and node.args:
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str) \
                    and _is_ours(first.value):
                self._add(node, self._deepest(first.value))
        self.generic_visit(node)


def collect(source: str, path: str, module: str, is_package: bool,
            modules: frozenset[str]) -> list[Import]:
    collector = _Collector(path, module, is_package, modules)
    collector.visit(ast.parse(source, filename=path))
    return collector.found


def _files() -> list[Path]:
    return sorted(p for p in PACKAGE_DIR.rglob("*.py") if "__pycache__" not in p.parts)


MODULES = frozenset(module_name(p) for p in _files())


def _all_imports() -> Iterator[Import]:
    repo = PACKAGE_DIR.parent
    for path in _files():
        yield from collect(path.read_text(encoding="utf-8"), str(path.relative_to(repo)),
                           module_name(path), path.name == "__init__.py", MODULES)


IMPORTS = tuple(_all_imports())
LAYER_OF = {room: (index, label) for index, (label, rooms) in enumerate(LAYERS)
            for room in rooms}


def _report(problems: list[str]) -> str:
    return f"{len(problems)} import(s) against the layering:\n  " + "\n  ".join(problems)


def test_every_room_has_one_place() -> None:
    placed = [room for _, rooms in LAYERS for room in rooms]
    twice = sorted({room for room in placed if placed.count(room) > 1})
    assert not twice, f"rooms placed in more than one layer: {twice}"
    found = {room_of(m) for m in MODULES}
    missing = sorted(found - set(placed))
    assert not missing, (
        f"rooms without a place in the layering: {missing}; add each to the layer of "
        "LAYERS in tests/unit/test_layering.py where it belongs (what it may import, "
        "and what may import it)")
    stale = sorted(set(placed) - found)
    assert not stale, f"LAYERS names rooms that no longer exist: {stale}; remove them"
    for importer, imported in ALLOWED_PAIRS:
        assert LAYER_OF[importer][0] == LAYER_OF[imported][0], (
            f"ALLOWED_PAIRS lists {importer} -> {imported}, which are not in one layer")


def test_imports_point_down() -> None:
    problems: list[str] = []
    used: set[tuple[str, str]] = set()
    seen: set[tuple[str, str]] = set()
    for imp in IMPORTS:
        importer, imported = room_of(imp.module), room_of(imp.target)
        if importer == imported or importer not in LAYER_OF or imported not in LAYER_OF:
            continue  # the same room; unplaced rooms fail test_every_room_has_one_place
        if (imp.where, imp.target) in seen:
            continue  # one line naming several things from one module
        seen.add((imp.where, imp.target))
        if (importer, imported) in ALLOWED_PAIRS:
            used.add((importer, imported))
        (low, low_label), (high, high_label) = LAYER_OF[importer], LAYER_OF[imported]
        if high < low:
            problems.append(f"{imp.where}: imports {imp.target}: {importer} ({low_label}) "
                            f"must not import {imported} ({high_label}), a higher layer")
        elif high == low and (importer, imported) not in ALLOWED_PAIRS:
            problems.append(f"{imp.where}: imports {imp.target}: {importer} and {imported} "
                            f"are both in {low_label}; rooms of one layer do not import "
                            "each other (or list the pair in ALLOWED_PAIRS with a reason)")
    problems += [f"ALLOWED_PAIRS: {a} -> {b} is no longer imported; remove the exception"
                 for a, b in sorted(set(ALLOWED_PAIRS) - used)]
    assert not problems, _report(problems)


def test_only_ceremony_and_cli_import_ceremony() -> None:
    problems = [
        f"{imp.where}: imports {imp.target}: only {sorted(CEREMONY_IMPORTERS)} may import "
        "appliance.ceremony (ceremonies are operator acts, not steps of the service)"
        for imp in IMPORTS
        if room_of(imp.target) == "ceremony" and room_of(imp.module) not in CEREMONY_IMPORTERS
    ]
    assert not problems, _report(problems)


def _circles(edges: dict[str, dict[str, Import]]) -> list[list[str]]:
    """The strongly connected parts (Tarjan) with more than one module, or a self-loop."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, {}):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            part: list[str] = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                part.append(top)
                if top == node:
                    break
            if len(part) > 1:
                found.append(sorted(part))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_no_import_circles_inside_a_room() -> None:
    edges: dict[str, dict[str, Import]] = {}
    for imp in IMPORTS:
        if imp.module_level and imp.module != imp.target \
                and room_of(imp.module) == room_of(imp.target):
            edges.setdefault(imp.module, {}).setdefault(imp.target, imp)
    problems = []
    for part in _circles(edges):
        members = set(part)
        links = [f"{imp.where} ({src} -> {dst})" for src in part
                 for dst, imp in sorted(edges.get(src, {}).items()) if dst in members]
        problems.append("circle " + " / ".join(part) + ": " + "; ".join(links))
    assert not problems, _report(problems)


# The collector itself: each way of writing an import is seen, so the rules above cannot
# pass merely because an import went unnoticed.

_SAMPLE = '''
from __future__ import annotations
import importlib
from typing import TYPE_CHECKING
import appliance.web.app
from appliance import config, __version__
from . import engine
from .. import errors
if TYPE_CHECKING:
    from appliance.acme.service import Service
def lazy():
    from appliance.cli import main
    return importlib.import_module("appliance.ops.policies")
'''

_SAMPLE_MODULES = frozenset({
    "appliance", "appliance.web", "appliance.web.app", "appliance.config", "appliance.errors",
    "appliance.policy", "appliance.policy.engine", "appliance.policy.names", "appliance.acme",
    "appliance.acme.service", "appliance.cli", "appliance.cli.main", "appliance.ops",
    "appliance.ops.policies",
})


def test_collector_sees_every_form_of_import() -> None:
    found = collect(_SAMPLE, "appliance/policy/names.py", "appliance.policy.names", False,
                    _SAMPLE_MODULES)
    assert [(i.line, i.target, i.module_level) for i in found] == [
        (5, "appliance.web.app", True),
        (6, "appliance.config", True),
        (6, "appliance", True),
        (7, "appliance.policy.engine", True),
        (8, "appliance.errors", True),
        (10, "appliance.acme.service", True),
        (12, "appliance.cli.main", False),
        (13, "appliance.ops.policies", False),
    ]
    assert [room_of(i.target) for i in found] == [
        "web", "config", "__init__", "policy", "errors", "acme", "cli", "ops"]


@pytest.mark.parametrize("part", [["a", "b"], ["a", "b", "c"]])
def test_circle_finder_finds_circles(part: list[str]) -> None:
    dummy = Import("x.py", "x", 1, "y", True)
    edges = {src: {dst: dummy} for src, dst in zip(part, part[1:] + part[:1], strict=True)}
    edges["d"] = {"a": dummy}  # leads into the circle, is not part of it
    assert _circles(edges) == [sorted(part)]
