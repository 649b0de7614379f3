"""Progress reports of long CLI runs (crl publish, ocsp presign) on stderr."""

from __future__ import annotations

import io

from appliance.cli.context import Progress


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_one_line_is_rewritten_and_ended() -> None:
    out = _Tty()
    p = Progress(True, stream=out)
    p.count("all", 0, 10)
    p.count("all", 10, 10)
    p.step("next phase")
    p.close()
    text = out.getvalue()
    assert text.startswith("\r\x1b[Kall: 0/10 (0%)")
    assert "\r\x1b[Kall: 10/10 (100%)" in text
    assert text.endswith("\r\x1b[Knext phase\n") and text.count("\n") == 2


def test_elsewhere_each_report_is_a_line_and_counts_are_throttled() -> None:
    out = io.StringIO()
    p = Progress(True, stream=out, interval=3600)
    for done in range(0, 101):
        p.count("stale", done, 100)
    p.step("a phase")
    p.close()
    lines = out.getvalue().splitlines()
    assert [line.split(",")[0] for line in lines] == [
        "stale: 0/100 (0%)", "stale: 100/100 (100%)", "a phase"]  # first and last only


def test_disabled_it_writes_nothing() -> None:
    out = _Tty()
    p = Progress(False, stream=out)
    p.count("all", 1, 2)
    p.step("x")
    p.close()
    assert out.getvalue() == ""
