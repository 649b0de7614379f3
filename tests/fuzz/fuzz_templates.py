"""Certificate templates: a template's source as ``template add`` checks it, rendered in the
sandbox and its output parsed against the certificate description schema."""

from __future__ import annotations

import contextlib
from collections.abc import Callable


def load() -> Callable[[bytes], None]:
    from appliance.templates import render as template_render
    from appliance.templates.errors import TemplateError, TemplateInputError, TemplateRefusal

    variables = {
        "subject": {"common_name": "f.test", "organization": ["O"]},
        "sans": [{"type": "dns", "value": "f.test"}, {"type": "ip", "value": "192.0.2.1"}],
        "token": {"sub": "f.test", "sans": ["f.test"]},
        "data": {"team": "t", "n": 3, "list": [1, 2]},
        "key": {"type": "EC", "curve": "secp256r1"},
    }

    def one_input(data: bytes) -> None:
        try:
            source = data.decode("utf-8")
        except UnicodeDecodeError:
            return
        try:
            template_render.check_template("fuzz", source)
            template_render.render("fuzz", source, variables, time_limit=0.5)
        except (TemplateError, TemplateRefusal, TemplateInputError):
            pass
        # the output side alone: JSON text into the description schema
        with contextlib.suppress(TemplateError):
            template_render.parse_description(source, name="fuzz")

    return one_input


if __name__ == "__main__":
    from tests.fuzz import harness
    harness.run("templates", load)
