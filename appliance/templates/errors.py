"""The errors a certificate template reports.

``TemplateError`` is a fault of the template (or of what it produced):
syntax, an undefined variable, a sandbox violation, a limit, output that is
not JSON or does not fit the certificate description schema.
``TemplateRefusal`` is the template deliberately refusing the request with
``fail("...")``; its message is the template author's, meant for the
requester. ``TemplateInputError`` is the caller's fault: input that cannot be
handed to a template at all.
"""

from __future__ import annotations

from appliance.errors import ApplianceError


class TemplateError(ApplianceError):
    """A template could not be rendered, or its output is not a valid certificate description."""

    code = "template_error"
    status = 422
    acme_type = "badCSR"

    def __init__(self, template: str, detail: str, line: int | None = None) -> None:
        self.template = template
        self.detail = detail
        self.line = line
        where = f", line {line}" if line is not None else ""
        super().__init__(f"template {template!r}{where}: {detail}")

    def __reduce__(self) -> tuple[type[TemplateError], tuple[str, str, int | None]]:
        return (type(self), (self.template, self.detail, self.line))


class TemplateRefusal(ApplianceError):
    """The template refused the request with ``fail(message)``; nothing is issued."""

    code = "template_refused"
    status = 403
    acme_type = "unauthorized"

    def __init__(self, template: str, message: str) -> None:
        self.template = template
        self.message = message
        super().__init__(f"template {template!r} refused the request: {message}")

    def __reduce__(self) -> tuple[type[TemplateRefusal], tuple[str, str]]:
        return (type(self), (self.template, self.message))


class TemplateInputError(ApplianceError):
    """What the caller wants to pass to a template cannot be passed (not the template's fault)."""

    code = "template_input_invalid"
    acme_type = "badCSR"
