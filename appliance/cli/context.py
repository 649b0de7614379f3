"""What every command shares: where the configuration is, and the lazily opened appliance."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import click

from appliance import config, durations
from appliance.runtime import Appliance


@dataclass
class CliContext:
    config_path: Path | None
    data_dir: Path | None
    _app: Appliance | None = field(default=None, repr=False)

    def app(self) -> Appliance:
        if self._app is None:
            path = config.locate(self.config_path, self.data_dir)
            self._app = Appliance(config.load(path))
        return self._app

    def close(self) -> None:
        if self._app is not None:
            self._app.close()


pass_ctx = click.make_pass_decorator(CliContext)


def emit_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")


EMPTY_CELL = "-"


def cell(value: Any) -> str:
    """A value as people read it: nothing (``None``, ``""``) is ``-``, not ``None``; a
    mapping is ``key=value, ...`` and a list ``a, b`` (not Python's repr)."""
    if value is None or value == "":
        return EMPTY_CELL
    if isinstance(value, dict):
        return ", ".join(f"{k}={cell(v)}" for k, v in value.items()) or EMPTY_CELL
    if isinstance(value, (list, tuple)):
        return ", ".join(cell(v) for v in value) or EMPTY_CELL
    return str(value)


def table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    """A plain aligned table for people; ``--json`` is for programs."""
    if not rows:
        click.echo("(none)")
        return
    cells = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    click.echo("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)))
    for row in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def fields(values: dict[str, Any], width: int = 20) -> None:
    """A ``show`` command's ``key  value`` lines (``-`` for nothing, like ``table``)."""
    for key, value in values.items():
        click.echo(f"{key:{width}}{cell(value)}")


def _set_dir(ctx: click.Context, _param: click.Parameter, value: Path | None) -> None:
    if value is not None:
        ctx.find_object(CliContext).data_dir = value  # type: ignore[union-attr]


def _set_config(ctx: click.Context, _param: click.Parameter, value: Path | None) -> None:
    if value is not None:
        ctx.find_object(CliContext).config_path = value  # type: ignore[union-attr]


F = TypeVar("F", bound=Callable[..., Any])


def location_options(fn: F) -> F:
    """``--dir`` / ``--config`` accepted after the subcommand too (``appliance init --dir D``)."""
    fn = click.option("--config", type=click.Path(path_type=Path), expose_value=False,
                      callback=_set_config, help="Configuration file.")(fn)
    fn = click.option("--dir", type=click.Path(path_type=Path), expose_value=False,
                      callback=_set_dir, help="Data directory holding appliance.yaml.")(fn)
    return fn


def duration_callback(_ctx: click.Context, _param: click.Parameter,
                      value: str | None) -> int | None:
    """A click callback: "90s", "5m", "24h", "30d" to seconds; a bad value is a usage error."""
    if value is None:
        return None
    try:
        return durations.parse(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
