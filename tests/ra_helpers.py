"""A topology of real appliance nodes for registration-authority tests (issue 15).

Each node is its own data directory (database, audit log, SoftHSM token) served by
``appliance --dir D serve`` on free ports of 127.0.0.1, exactly as an operator would run
it: the CA by ``appliance quickstart``, an RA by ``appliance ra init`` (its credential key
made in its own token, a CSR printed), registered at its upstream with ``appliance
provisioner add NAME --type ra --csr F`` (which prints the credential chain), and given
that chain with ``appliance ra import``.

A node keeps its ports for its whole life, so a stopped upstream restarted with
:meth:`Node.start` is found again by the RAs below it (their ``ra.upstream_url`` names
the port).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from tests.conftest import run_cli
from tests.service_helpers import (
    START_TIMEOUT,
    Server,
    _wait_ready,
    configure,
    configure_service,
    stop_process,
)

PEM_CSR = re.compile(r"-----BEGIN CERTIFICATE REQUEST-----.+?-----END CERTIFICATE REQUEST-----\n?",
                     re.S)
PEM_CERT = re.compile(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----\n?", re.S)


@dataclass
class Node:
    """One appliance node (the CA or an RA) and, while it serves, its :class:`Server`."""

    name: str  # "CA", or the RA's name
    data_dir: Path
    api_port: int
    http_port: int
    upstream: Node | None = None
    server: Server | None = None
    starts: int = 0
    stopped_cleanly: list[bool] = field(default_factory=list)

    # -- running it --------------------------------------------------------------------

    def start(self) -> Server:
        """``appliance --dir D serve`` on this node's ports; returns once both listeners
        answer /health."""
        if self.server is not None and self.server.proc.poll() is None:
            return self.server
        env = dict(os.environ)
        env.pop("SOFTHSM2_CONF", None)  # the data directory's profile names its own store
        env.pop("APPLIANCE_CONFIG", None)
        self.starts += 1
        log = self.data_dir / f"serve-{self.starts}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "appliance", "--dir", str(self.data_dir), "serve"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                start_new_session=True)
        server = Server(self.data_dir, self.api_port, self.http_port, proc, log)
        try:
            _wait_ready(server, time.monotonic() + START_TIMEOUT)
        except BaseException:
            stop_process(proc)
            raise
        self.server = server
        return server

    def stop(self) -> None:
        """SIGTERM, then the process group is killed; records whether that was clean."""
        if self.server is None:
            return
        srv, self.server = self.server, None
        srv.session.close()
        left = stop_process(srv.proc)
        self.stopped_cleanly.append(srv.proc.returncode == 0 and not left)

    @property
    def srv(self) -> Server:
        if self.server is None:
            raise AssertionError(f"{self.name} is not serving")
        return self.server

    # -- what a client or an operator uses ----------------------------------------------

    @property
    def api(self) -> str:
        return f"https://127.0.0.1:{self.api_port}"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def roots(self) -> Path:
        return self.data_dir / "tls" / "roots.pem"

    def cli(self, *args: str, check: bool = True,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        return run_cli("--dir", str(self.data_dir), *args, check=check, input=input)

    def offline(self) -> Server:
        """A :class:`Server` view for reading the database and minting tokens while the
        node is not serving (its ``proc`` is a finished placeholder)."""
        if self.server is not None:
            return self.server
        proc = subprocess.Popen(["true"])
        proc.wait()
        return Server(self.data_dir, self.api_port, self.http_port, proc,
                      self.data_dir / "serve.log")

    def events(self, event_type: str | None = None) -> list[dict[str, Any]]:
        return self.offline().events(event_type)

    def audit_verify(self) -> subprocess.CompletedProcess[str]:
        return self.cli("audit", "verify", check=False)


# -- making the nodes ------------------------------------------------------------------------


def _ports(data_dir: Path, **service: Any) -> tuple[int, int]:
    return configure_service(data_dir, rate_limit_per_minute=0, **service)


def make_ca(base: Path, **service: Any) -> Node:
    """``appliance quickstart`` in BASE/ca, on free ports (not yet serving)."""
    d = base / "ca"
    run_cli("quickstart", "--dir", str(d), check=True)
    api, http = _ports(d, **service)
    return Node("CA", d, api, http)


def root_pem(ca: Node) -> str:
    """The CA's root certificate(s) as ``/1.0/roots`` answers (the serving CA's): what every
    node's clients and RAs trust. Not DATA/tls/roots.pem, which also holds the issuing CA."""
    r = requests.get(ca.api + "/1.0/roots", verify=str(ca.roots), timeout=30)
    r.raise_for_status()
    return "".join(r.json()["crts"])


def ra_init(base: Path, name: str, upstream: Node, ca: Node, **ra: Any) -> tuple[Node, str]:
    """``appliance ra init --dir BASE/NAME --upstream URL --upstream-root ROOT --name NAME``:
    the RA's data directory and token, its credential key; returns the node (ports chosen,
    ``ra:`` settings applied) and the credential CSR it printed."""
    d = base / name
    root = base / f"{name}-upstream-root.pem"
    root.write_text(root_pem(ca))
    proc = run_cli("ra", "init", "--dir", str(d), "--upstream", upstream.api,
                   "--upstream-root", str(root), "--name", name, check=True)
    m = PEM_CSR.search(proc.stdout)
    if m is None:
        raise AssertionError(f"ra init printed no CSR:\n{proc.stdout}\n{proc.stderr}")
    # One worker per listener: an RA node's work is forwarding (threads wait on the
    # upstream), and the suite's CPU on two cores is what it can least spare.
    api, http = _ports(d, workers=1, http_workers=1)
    if ra:
        configure(d, "ra", **ra)
    return Node(name, d, api, http, upstream=upstream), m.group(0)


def register(parent: Node, name: str, csr: str, *, policy: str | None = None,
             max_duration: str | None = None) -> str:
    """``appliance provisioner add NAME --type ra --csr F`` on PARENT (the CA issues the
    credential itself; an RA forwards ``/1.0/ra/register``): the chain it printed."""
    work = parent.data_dir.parent
    csr_file = work / f"{name}.csr"
    csr_file.write_text(csr)
    args = ["provisioner", "add", name, "--type", "ra", "--csr", str(csr_file)]
    if policy is not None:
        pol = work / f"{name}-policy.yaml"
        pol.write_text(policy)
        args += ["--policy", str(pol)]
    if max_duration is not None:
        args += ["--max-duration", max_duration]
    proc = parent.cli(*args)
    chain = "".join(PEM_CERT.findall(proc.stdout))
    if not chain:
        raise AssertionError(f"provisioner add {name} printed no certificate:\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return chain


def ra_import(node: Node, chain: str) -> None:
    """``appliance ra import --dir R CERT.pem``."""
    cert = node.data_dir.parent / f"{node.name}-credential.pem"
    cert.write_text(chain)
    run_cli("ra", "import", "--dir", str(node.data_dir), str(cert), check=True)


def make_ra(base: Path, name: str, upstream: Node, ca: Node, *, policy: str | None = None,
            max_duration: str | None = None, start: bool = True, **ra: Any) -> Node:
    """init, register at the (serving) upstream, import, serve."""
    node, csr = ra_init(base, name, upstream, ca, **ra)
    ra_import(node, register(upstream, name, csr, policy=policy, max_duration=max_duration))
    if start:
        node.start()
    return node


# -- talking to a node --------------------------------------------------------------------


def revoke_audience(node: Node) -> str:
    return node.srv.audience.replace("/1.0/sign", "/1.0/revoke")


def revoke(node: Node, serial: str, reason: int = 1,
           session: requests.Session | None = None) -> requests.Response:
    """``POST /1.0/revoke`` with a one-time token of the node's ``admin`` (sub = serial)."""
    srv = node.srv
    ott = srv.token(serial, audience=revoke_audience(node))
    s = session or srv.session
    return s.post(node.api + "/1.0/revoke", json={"serial": serial, "reasonCode": reason,
                                                   "ott": ott},
                  verify=str(node.roots), timeout=60)


def cert_show(node: Node, serial: str) -> dict[str, Any]:
    import json

    out: dict[str, Any] = json.loads(node.cli("cert", "show", serial, "--json").stdout)
    return out


def ca_serials(ca: Node) -> set[str]:
    return set(ca.offline().certificate_rows())


def wait_for(predicate: Any, timeout: float, interval: float = 0.25, what: str = "") -> Any:
    """Poll ``predicate()`` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what or predicate}")
        time.sleep(interval)


# -- speaking as an RA, straight to its upstream -----------------------------------------

_AS_RA_REVOKE = r"""
import json, sys
from pathlib import Path
from appliance import config
from appliance.ra import assertion, node as ra_node
from appliance.ra.errors import UpstreamRefused, UpstreamUnavailable
from appliance.runtime import Appliance

app = Appliance(config.load(Path(sys.argv[1]) / "appliance.yaml"))
try:
    node, serial = ra_node.node_of(app), sys.argv[2]
    token = node.sign_hop(op="revoke", subject_sha256=assertion.serial_digest(serial),
                          names=[], requester="test:direct", reason="keyCompromise",
                          provisioner={"name": "admin", "type": "jwk"})
    try:
        status, body = node.post("/1.0/ra/revoke", {"serial": serial, "assertion": token,
                                                    "reasonCode": "keyCompromise"})
        out = {"status": status, "body": body}
    except UpstreamRefused as exc:
        out = {"status": exc.status, "code": exc.code, "message": str(exc), "hop": exc.hop}
    except UpstreamUnavailable as exc:
        out = {"status": 503, "code": exc.code, "message": str(exc)}
    print(json.dumps(out))
finally:
    app.close()
"""


def revoke_as_ra(node: Node, serial: str) -> dict[str, Any]:
    """NODE's own ``/1.0/ra/revoke`` of SERIAL at its upstream, over mTLS with NODE's
    credential (key in NODE's token) and a hop assertion it signs: what a (compromised or
    mistaken) RA could send, bypassing its own local rules. Run in a process of its own, as
    the node's CLI would (its token, its PIN file)."""
    import json

    env = dict(os.environ)
    env.pop("SOFTHSM2_CONF", None)
    proc = subprocess.run([sys.executable, "-c", _AS_RA_REVOKE, str(node.data_dir), serial],
                          capture_output=True, text=True, timeout=120, env=env, check=False)
    if proc.returncode != 0 or not proc.stdout.strip():
        raise AssertionError(f"revoke as {node.name} failed:\n{proc.stdout}\n{proc.stderr}")
    out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out
