"""WSGI (and ASGI) entry points for gunicorn, built in each worker after fork (never before):
token sessions and database connections must belong to the process that uses them."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask

from appliance import config, logs
from appliance.runtime import Appliance
from appliance.web import public
from appliance.web.app import create_app


def _appliance() -> Appliance:
    settings = config.load(config.locate(None, None))
    logs.configure(settings.config.logging.level)
    return Appliance(settings)


def api_app() -> Flask:
    return create_app(_appliance())


def public_app() -> Callable[[dict[str, Any], public.StartResponse], Iterable[bytes]]:
    return public.make_app(_appliance())


def public_asgi() -> Any:
    """The same listener as ASGI, for gunicorn's uvicorn worker (``service.http_server``)."""
    from appliance.web.public_asgi import PublicAsgi

    return PublicAsgi(_appliance())
