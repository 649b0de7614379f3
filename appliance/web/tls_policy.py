"""The API's TLS versions, suites and groups, from the algorithm table (issue 14).

Python's :mod:`ssl` sets the TLS 1.2 cipher list (``set_ciphers``) and the lowest version,
but has no call for the TLS 1.3 suites nor for the key-exchange groups list (only one
curve, ``set_ecdh_curve``). OpenSSL reads both from its configuration file, once, when the
process first initialises libssl, as the ``system_default`` of every new ``SSL_CTX``. So
when the table narrows either (the FIPS mode), the API process is re-executed at start with
``OPENSSL_CONF`` naming a file written from the table (:func:`reexec_with_openssl_conf`);
setting the variable later in a running process has no effect, which is why it is an exec
and not an ``os.environ`` assignment.

Soundness does not rest on that mechanism: :func:`apply` reads back the suites the context
will offer and refuses to serve (``ConfigError``) if one is outside the table, so a process
started without the file (or with an OpenSSL that ignored it) fails closed instead of
offering ChaCha20-Poly1305 in FIPS mode. The groups cannot be read back through
:mod:`ssl`; they are checked from outside with ``openssl s_client -groups``
(tests/integration/test_fips_algorithms.py).

The default table leaves all three to OpenSSL (``None``): today's defaults, ChaCha20-
Poly1305 included, and no re-exec.
"""

from __future__ import annotations

import hashlib
import os
import ssl
import sys
import tempfile
from pathlib import Path

from appliance.errors import ConfigError
from appliance.x509 import algorithms

ENV_MARK = "APPLIANCE_TLS_OPENSSL_CONF"  # set on the re-executed process: do not loop
_VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}


def openssl_conf_text(tls: algorithms.Tls) -> str | None:
    """The OpenSSL configuration that makes every new context start from ``tls``; ``None``
    when the table leaves the TLS 1.3 suites and the groups to OpenSSL."""
    if tls.suites13 is None and tls.groups is None:
        return None
    lines = [f"MinProtocol = {tls.min_version}"]
    if tls.ciphers12 is not None:
        lines.append(f"CipherString = {':'.join(tls.ciphers12)}")
    if tls.suites13 is not None:
        lines.append(f"Ciphersuites = {':'.join(tls.suites13)}")
    if tls.groups is not None:
        lines.append(f"Groups = {':'.join(tls.groups)}")
    return ("# Written by the appliance from its algorithm table (appliance/web/tls_policy.py)\n"
            "openssl_conf = appliance_conf\n[appliance_conf]\nssl_conf = appliance_ssl\n"
            "[appliance_ssl]\nsystem_default = appliance_tls\n[appliance_tls]\n"
            + "\n".join(lines) + "\n")


def reexec_with_openssl_conf(tls: algorithms.Tls, argv: list[str]) -> None:
    """Re-execute this process (``python -m <module> argv``) under an ``OPENSSL_CONF``
    written from ``tls``, unless the table needs none or this process already is the
    re-executed one. Returns only in those two cases."""
    text = openssl_conf_text(tls)
    if text is None or os.environ.get(ENV_MARK):
        return
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    folder = Path(tempfile.mkdtemp(prefix="appliance-tls-"))  # 0700, this user's
    path = folder / f"openssl-{digest}.cnf"
    path.write_text(text)
    env = dict(os.environ, OPENSSL_CONF=str(path), **{ENV_MARK: str(path)})
    # The same interpreter and module, argv as given: no shell, nothing from the outside.
    os.execve(sys.executable,  # noqa: S606
              [sys.executable, "-m", "appliance.web.api_server", *argv], env)


def apply(ctx: ssl.SSLContext, tls: algorithms.Tls) -> None:
    """Lowest version and TLS 1.2 ciphers from ``tls``; then the suites the context offers
    are read back and any outside the table is a ``ConfigError`` (fail closed)."""
    ctx.minimum_version = _VERSIONS[tls.min_version]
    if tls.ciphers12 is not None:
        try:
            ctx.set_ciphers(":".join(tls.ciphers12))
        except ssl.SSLError as exc:
            raise ConfigError(f"the TLS 1.2 ciphers of the algorithm table are not available "
                              f"in this OpenSSL: {exc}") from None
    offered = offered_suites(ctx)
    allowed = set(tls.ciphers12 or ()) | set(tls.suites13 or ())
    extra = [name for name in offered if name not in allowed]
    if (tls.ciphers12 is not None or tls.suites13 is not None) and extra:
        mode = algorithms.current().mode or "this"
        raise ConfigError(
            f"the API's TLS would offer suites not approved in {mode} mode: {', '.join(extra)} "
            f"(TLS 1.3 suites come from OPENSSL_CONF, which must be set when the process "
            f"starts; start the API with `appliance serve`)")


def offered_suites(ctx: ssl.SSLContext) -> list[str]:
    """The names of the TLS 1.2 ciphers and TLS 1.3 suites ``ctx`` offers."""
    return [str(c["name"]) for c in ctx.get_ciphers()]


def cleanup() -> None:
    """Remove the file :func:`reexec_with_openssl_conf` wrote, once libssl has read it (the
    first context of the process); what is left is the process's memory."""
    path = os.environ.get(ENV_MARK)
    if path and os.environ.get("OPENSSL_CONF") == path:
        try:
            Path(path).unlink()
            Path(path).parent.rmdir()
        except OSError:
            pass
