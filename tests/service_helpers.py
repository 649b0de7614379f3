"""Helpers for tests that run ``appliance serve`` and talk to it over real HTTP(S).

A server is started on free ports in its own session (process group), so a
failing test cannot leave gunicorn workers behind: teardown sends SIGTERM to
``appliance serve`` (which stops both gunicorn groups) and then kills the whole
group whatever is left.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import jwt
import requests
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from appliance.provisioners import sealed, tokens
from appliance.provisioners.settings import sign_audience
from tests.conftest import run_cli

START_TIMEOUT = 60.0


def provisioner_key(data_dir: Path, name: str = "admin") -> ec.EllipticCurvePrivateKey:
    """The token-signing key quickstart (or ``provisioner add --generate-password``) left
    sealed in DATA/secrets/, opened with the password written beside it; a plaintext key
    of an old-style data directory is read as it is."""
    sealed_file = data_dir / "secrets" / f"provisioner-{name}.jwe"
    if sealed_file.exists():
        st = sealed_file.stat()
        return _unsealed(str(sealed_file), st.st_ino, st.st_mtime_ns)
    pem = (data_dir / "secrets" / f"provisioner-{name}.pem").read_bytes()
    k = serialization.load_pem_private_key(pem, None)
    assert isinstance(k, ec.EllipticCurvePrivateKey)
    return k


@lru_cache(maxsize=64)
def _unsealed(path: str, _ino: int, _mtime: int) -> ec.EllipticCurvePrivateKey:
    """Unsealed once per file version (PBKDF2 with 600,000 rounds is not free)."""
    password_file = Path(path).with_suffix(".password")
    return sealed.unseal(Path(path).read_text().strip(),
                         sealed.read_password_file(password_file))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def configure_service(data_dir: Path, **extra: Any) -> tuple[int, int]:
    """Append a ``service:`` block on two free ports to DIR/appliance.yaml (replacing one)."""
    api, http = free_port(), free_port()
    while http == api:
        http = free_port()
    path = data_dir / "appliance.yaml"
    text = re.sub(r"(?m)^service:\n(?:[ \t]+.*\n?)*", "", path.read_text())
    block = {"api_listen": f"127.0.0.1:{api}", "http_listen": f"127.0.0.1:{http}",
             "public_base_url": f"http://127.0.0.1:{http}", **extra}
    lines = "".join(f"  {k}: {v}\n" for k, v in block.items())
    path.write_text(text.rstrip("\n") + "\nservice:\n" + lines)
    return api, http


def configure(data_dir: Path, block: str, **values: Any) -> None:
    """Set ``values`` in the ``block:`` section of DIR/appliance.yaml (every section is
    already there, as init writes it; a second ``block:`` would be a duplicate key)."""
    path = data_dir / "appliance.yaml"
    doc = yaml.safe_load(path.read_text())
    doc[block] = {**(doc.get(block) or {}), **values}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


@dataclass
class Server:
    """A running ``appliance serve`` and what a client needs to talk to it."""

    data_dir: Path
    api_port: int
    http_port: int
    proc: subprocess.Popen[bytes]
    log: Path
    session: requests.Session = field(default_factory=requests.Session)
    stragglers: bool = False  # set at the stop: processes were left after serve exited

    @property
    def api(self) -> str:
        return f"https://127.0.0.1:{self.api_port}"

    def api_workers(self) -> list[int]:
        """PIDs of the API's workers (children of its supervisor), from /proc."""
        procs: dict[int, tuple[int, str]] = {}
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            procs[int(pid)] = (ppid, cmd)
        masters = {p for p, (pp, cmd) in procs.items()
                   if pp == self.proc.pid and "appliance.web.api_server" in cmd}
        return sorted(p for p, (pp, _) in procs.items() if pp in masters)

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def roots(self) -> Path:
        return self.data_dir / "tls" / "roots.pem"

    @property
    def audience(self) -> str:
        return sign_audience("127.0.0.1", f"127.0.0.1:{self.api_port}")

    def get(self, path: str, **kw: Any) -> requests.Response:
        return self.session.get(self.api + path, verify=str(self.roots), timeout=30, **kw)

    def post(self, path: str, **kw: Any) -> requests.Response:
        return self.session.post(self.api + path, verify=str(self.roots), timeout=30, **kw)

    def sign(self, csr: str, ott: str, session: requests.Session | None = None,
             **extra: Any) -> requests.Response:
        body = {"csr": csr, "ott": ott, **extra}
        s = session or self.session
        return s.post(self.api + "/1.0/sign", json=body, verify=str(self.roots), timeout=60)

    def key(self, provisioner: str = "admin") -> ec.EllipticCurvePrivateKey:
        return provisioner_key(self.data_dir, provisioner)

    def password_file(self, provisioner: str = "admin") -> str:
        """For ``appliance token NAME --password-file`` (what quickstart generated)."""
        return str(self.data_dir / "secrets" / f"provisioner-{provisioner}.password")

    def token(self, *sans: str, provisioner: str = "admin",
              key: ec.EllipticCurvePrivateKey | None = None, audience: str | None = None,
              now: float | None = None, cert_lifetime: int | None = None,
              **claims: Any) -> str:
        """A one-time token minted in-process (as ``appliance token`` does, minus the CLI)."""
        k = key or self.key(provisioner)
        if not claims:
            return tokens.mint(k, provisioner=provisioner, audience=audience or self.audience,
                               sans=list(sans), now=now, cert_lifetime=cert_lifetime)
        t = int(now if now is not None else time.time())
        payload: dict[str, Any] = {
            "iss": provisioner, "aud": audience or self.audience, "sub": sans[0],
            "sans": list(sans), "iat": t, "nbf": t, "exp": t + 300,
            "jti": secrets.token_urlsafe(24), **claims}
        if cert_lifetime is not None:
            payload["cert_lifetime"] = cert_lifetime
        kid = tokens.public_jwk(k.public_key())["kid"]
        return jwt.encode(payload, k, algorithm="ES256", headers={"kid": kid, "typ": "JWT"})

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run_cli("--dir", str(self.data_dir), *args, check=check)

    # -- the database, read directly (cheaper than a CLI process per check) ---------------

    @contextmanager
    def db(self, readonly: bool = True) -> Iterator[sqlite3.Connection]:
        """The appliance's SQLite database (committed and closed when the block ends)."""
        mode = "ro" if readonly else "rw"
        conn = sqlite3.connect(f"file:{self.data_dir / 'appliance.db'}?mode={mode}", uri=True,
                               timeout=30)
        conn.row_factory = sqlite3.Row
        try:
            with conn:
                yield conn
        finally:
            conn.close()

    def issued_count(self) -> int:
        with self.db() as conn:
            n: int = conn.execute(
                "SELECT COUNT(*) FROM certificates WHERE status = 'issued'").fetchone()[0]
        return n

    def certificate_rows(self) -> dict[str, sqlite3.Row]:
        with self.db() as conn:
            rows = conn.execute("SELECT * FROM certificates").fetchall()
        return {r["serial_hex"]: r for r in rows}

    def events(self, event_type: str | None = None) -> list[dict[str, Any]]:
        with self.db() as conn:
            rows = conn.execute("SELECT seq, event_type, outcome, object_ids, details "
                                "FROM audit_events ORDER BY id").fetchall()
        out = [{"seq": r["seq"], "event_type": r["event_type"], "outcome": r["outcome"],
                "object_ids": json.loads(r["object_ids"]), "details": json.loads(r["details"])}
               for r in rows]
        return [e for e in out if event_type is None or e["event_type"] == event_type]

    def stop(self) -> bool:
        return stop_process(self.proc)


def _wait_ready(server: Server, deadline: float) -> None:
    last: Exception | None = None
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise AssertionError(f"appliance serve exited {server.proc.returncode}:\n"
                                 f"{server.log.read_text(errors='replace')}")
        try:
            if server.roots.exists():
                api = requests.get(server.api + "/1.0/health", verify=str(server.roots),
                                   timeout=2)
                http = requests.get(server.http + "/health", timeout=2)
                if api.status_code == 200 and http.status_code == 200:
                    return
        except (requests.RequestException, OSError) as exc:
            last = exc
        time.sleep(0.1)
    raise AssertionError(f"appliance serve did not answer within {START_TIMEOUT}s ({last}):\n"
                         f"{server.log.read_text(errors='replace')}")


def stop_process(proc: subprocess.Popen[bytes]) -> bool:
    """SIGTERM to ``appliance serve``; then whatever is left of its process group is killed.

    Returns whether anything was left to kill (a clean stop leaves nothing)."""
    if proc.poll() is None:
        with suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        with suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=25)
    stragglers = False
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # this group only: serve and its gunicorns
        stragglers = True
    except (ProcessLookupError, PermissionError):
        pass
    with suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)
    return stragglers


@contextmanager
def serving(data_dir: Path, **service: Any) -> Iterator[Server]:
    """Run ``appliance --dir DIR serve`` on free ports until the block ends.

    One API worker and one public-listener worker unless asked: each worker costs the
    suite a second or so of CPU at every start, and two cores are all it has. Modules
    that test behaviour across workers ask for two (``serving_two_workers``)."""
    service.setdefault("workers", 1)
    service.setdefault("http_workers", 1)
    api, http = configure_service(data_dir, **service)
    env = dict(os.environ)
    env.pop("SOFTHSM2_CONF", None)  # the data directory's profile names its own store
    env.pop("APPLIANCE_CONFIG", None)
    log = data_dir / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "appliance", "--dir", str(data_dir), "serve"],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    server = Server(data_dir, api, http, proc, log)
    try:
        _wait_ready(server, time.monotonic() + START_TIMEOUT)
        yield server
    finally:
        server.session.close()
        server.stragglers = stop_process(proc)


def serving_two_workers(data_dir: Path,
                        **service: Any) -> contextlib.AbstractContextManager[Server]:
    """:func:`serving` with two API and two public-listener workers (unless asked)."""
    service.setdefault("workers", 2)
    service.setdefault("http_workers", 2)
    return serving(data_dir, **service)


# -- CSRs and certificates ----------------------------------------------------------------


def make_csr(workdir: Path, *sans: str, cn: str | None = None, key: str = "ec",
             subject: str | None = None) -> str:
    """A CSR made by ``openssl req``; ``sans`` are openssl SAN items (``DNS:x``, ``IP:y``...)."""
    workdir.mkdir(parents=True, exist_ok=True)
    stem = workdir / f"csr-{secrets.token_hex(4)}"
    keyopt = (["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"] if key == "ec"
              else ["-newkey", "rsa:2048" if key == "rsa" else key])
    subj = subject if subject is not None else (f"/CN={cn}" if cn else "/")
    cmd = ["openssl", "req", "-new", *keyopt, "-nodes", "-keyout", f"{stem}.key",
           "-subj", subj, "-out", f"{stem}.csr"]
    if sans:
        cmd += ["-addext", "subjectAltName=" + ",".join(sans)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    if proc.returncode != 0:
        raise AssertionError(f"openssl req failed: {proc.stderr}")
    return Path(f"{stem}.csr").read_text()


def load_pem(pem: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem.encode())


def verify_chain(workdir: Path, root_pem: str, chain: list[str], leaves: str | list[str],
                 *extra: str) -> subprocess.CompletedProcess[str]:
    """``openssl verify -CAfile root -untrusted chain leaf...`` (one or several leaves)."""
    workdir.mkdir(parents=True, exist_ok=True)
    tag = secrets.token_hex(4)
    root_f, chain_f = (workdir / f"{n}-{tag}.pem" for n in ("root", "chain"))
    root_f.write_text(root_pem)
    chain_f.write_text("".join(chain))
    files = []
    for i, leaf in enumerate([leaves] if isinstance(leaves, str) else leaves):
        f = workdir / f"leaf-{tag}-{i}.pem"
        f.write_text(leaf)
        files.append(str(f))
    return subprocess.run(["openssl", "verify", *extra, "-CAfile", str(root_f),
                           "-untrusted", str(chain_f), *files],
                          capture_output=True, text=True, timeout=60, check=False)


def ext(cert: x509.Certificate, cls: type[Any]) -> Any:
    return cert.extensions.get_extension_for_class(cls).value


def san_values(cert: x509.Certificate) -> list[str]:
    try:
        san = ext(cert, x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return [str(getattr(n, "value", n)) for n in san]


def cn_of(cert: x509.Certificate) -> str | None:
    attrs = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else None
