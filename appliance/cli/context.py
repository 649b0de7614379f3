"""What every command shares: where the configuration is, and the lazily opened appliance."""

from __future__ import annotations

import json
import sys
import time
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


class Progress:
    """Progress of a long run on stderr, for the person watching it.

    On a terminal one line is rewritten in place; elsewhere (``--progress`` into a log) each
    report is a line of its own, at most one every ``interval`` seconds, so a timer's
    journal is not flooded. Nothing at all unless enabled: scripts read the summary line.
    """

    def __init__(self, enabled: bool, *, stream: Any = None, interval: float = 2.0) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = 0.2 if self.tty else interval
        self.started = time.monotonic()
        self._last = -1e9
        self._open = False  # a rewritten line is waiting for its newline
        self._counted = False  # the first count is always shown, then throttled ones

    def _write(self, text: str, *, force: bool) -> None:
        now = time.monotonic()
        if not self.enabled or (not force and now - self._last < self.interval):
            return
        self._last = now
        if self.tty:
            self.stream.write("\r\x1b[K" + text)
            self._open = True
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def step(self, text: str) -> None:
        """A new phase of the work (always shown when enabled)."""
        self._end_line()
        self._write(text, force=True)

    def count(self, label: str, done: int, total: int) -> None:
        """``done`` of ``total`` items, with the rate so far."""
        elapsed = max(time.monotonic() - self.started, 1e-6)
        pct = 100 * done // total if total else 100
        first, self._counted = not self._counted, True
        self._write(f"{label}: {done}/{total} ({pct}%), {done / elapsed:.0f}/s, "
                    f"{elapsed:.0f}s", force=first or done == total)

    def _end_line(self) -> None:
        if self._open:
            self.stream.write("\n")
            self.stream.flush()
            self._open = False

    def close(self) -> None:
        self._end_line()


def progress_option(fn: F) -> F:
    """``--progress/--no-progress``: by default shown when stderr is a terminal."""
    return click.option("--progress/--no-progress", "progress", default=None,
                        help="Report progress on stderr (default: when it is a terminal).")(fn)


def make_progress(flag: bool | None) -> Progress:
    return Progress(flag if flag is not None else sys.stderr.isatty())
