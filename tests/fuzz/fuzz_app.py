"""The whole Flask application, in process, on a quickstart data directory (its own SoftHSM
token): a fuzzed request to any REST or ACME endpoint must never be answered 5xx, nor with
anything but a JSON (or problem+json) error. Slower than the parser targets (each request
reads the database; a refused token is audited), so it runs fewer inputs, end to end.

The first input byte picks the endpoint; the rest is the body (for renew: the Bearer token).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

BASE = "https://127.0.0.1:8443"
ENDPOINTS = [
    ("POST", "/1.0/sign", "application/json"),
    ("POST", "/1.0/revoke", "application/json"),
    ("POST", "/1.0/renew", None),
    ("POST", "/acme/acme/new-account", "application/jose+json"),
    ("POST", "/acme/acme/new-order", "application/jose+json"),
    ("POST", "/acme/acme/key-change", "application/jose+json"),
    ("POST", "/acme/acme/revoke-cert", "application/jose+json"),
    ("POST", "/acme/acme/order/x/finalize", "application/jose+json"),
    ("POST", "/acme/acme/authz/x", "application/jose+json"),
    ("GET", "/acme/acme/renewal-info/", None),
]


def _data_dir() -> Path:
    d = Path(tempfile.mkdtemp(prefix="fuzz-app-")) / "data"
    env = {k: v for k, v in os.environ.items() if k != "SOFTHSM2_CONF"}
    subprocess.run([sys.executable, "-m", "appliance", "quickstart", "--dir", str(d)],
                   check=True, capture_output=True, env=env, timeout=120)
    import yaml  # init writes every section: set the value in place (a second block is refused)

    cfg = d / "appliance.yaml"
    doc = yaml.safe_load(cfg.read_text())
    doc["service"] = {**(doc.get("service") or {}), "rate_limit_per_minute": 0}
    cfg.write_text(yaml.safe_dump(doc, sort_keys=False))
    return d


def load() -> Callable[[bytes], None]:
    os.environ.pop("SOFTHSM2_CONF", None)  # the data directory's profile names its store
    data_dir = _data_dir()
    import logging

    from appliance import config
    from appliance.runtime import Appliance
    from appliance.web.app import create_app

    logging.disable(logging.CRITICAL)  # refusals log; the verdict is the status code
    app = Appliance(config.load(data_dir / "appliance.yaml"))
    flask_app = create_app(app)
    client = flask_app.test_client()

    def one_input(data: bytes) -> None:
        if not data:
            return
        method, path, ctype = ENDPOINTS[data[0] % len(ENDPOINTS)]
        body = data[1:]
        headers = {}
        if path == "/1.0/renew":
            # (no CR or LF: those end a header line in HTTP)
            token = body.decode("latin-1").replace("\r", "").replace("\n", "")
            headers["Authorization"] = "Bearer " + token
            body = b""
        if method == "GET":
            r = client.get(path + body.decode("latin-1").replace("?", "%3F")
                           .replace("#", "%23"), base_url=BASE)
        else:
            r = client.open(path, method=method, data=body, content_type=ctype,
                            headers=headers, base_url=BASE)
        if r.status_code >= 500:
            raise AssertionError(f"{method} {path} answered {r.status_code}: "
                                 f"{r.get_data(as_text=True)[:500]}")
        if r.status_code >= 400 and not r.mimetype.endswith("json"):
            raise AssertionError(f"{method} {path} answered {r.status_code} as {r.mimetype}")

    return one_input


if __name__ == "__main__":
    from tests.fuzz import harness
    harness.run("app", load)
