"""WSGI (and ASGI) entry points for gunicorn, built in each worker after fork (never before):
token sessions and database connections must belong to the process that uses them."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from appliance import config, logs
from appliance.runtime import Appliance
from appliance.web import public
from appliance.web.app import create_app


def _appliance() -> Appliance:
    settings = config.load(config.locate(None, None))
    logs.configure(settings.config.logging.level)
    return Appliance(settings)


def _quiet_server_header() -> None:
    """gunicorn writes ``Server: gunicorn`` into every response itself (the app cannot
    remove it): it names the software and its family to anyone scanning. Its Response
    reads the name from this module global on each response."""
    import importlib

    setattr(importlib.import_module("gunicorn.http.wsgi"), "SERVER", "appliance")  # noqa: B010


def api_app() -> Callable[[dict[str, Any], public.StartResponse], Iterable[bytes]]:
    """The API as a plain WSGI app for gunicorn (``bench/api_load.py`` compares it with
    :mod:`appliance.web.api_server`, which serves the API: gunicorn gives a slow client a
    thread). The client certificate is read off gunicorn's TLS socket."""
    _quiet_server_header()
    flask_app = create_app(_appliance())

    def app(environ: dict[str, Any], start_response: public.StartResponse) -> Iterable[bytes]:
        sock = environ.get("gunicorn.socket")
        getpeercert = getattr(sock, "getpeercert", None)
        environ["appliance.peer_certificate"] = getpeercert(binary_form=True) \
            if getpeercert is not None else None
        return flask_app(environ, start_response)  # type: ignore[arg-type]

    return app


def public_app() -> Callable[[dict[str, Any], public.StartResponse], Iterable[bytes]]:
    _quiet_server_header()
    return public.make_app(_appliance())


def public_asgi() -> Any:
    """The same listener as ASGI, for gunicorn's uvicorn worker (``service.http_server``)."""
    from appliance.web.public_asgi import PublicAsgi

    return PublicAsgi(_appliance())
