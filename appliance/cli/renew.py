"""``appliance renew``: the client side of renewal, for any host holding a certificate.

While the certificate is valid it authenticates by mutual TLS; once expired it
signs a short token with its own key and sends the certificate in the token's
``x5c`` header. The new certificate (and chain) replaces the file atomically.
"""

from __future__ import annotations

import base64
import os
import secrets
import time
from datetime import UTC, datetime
from pathlib import Path

import click
import jwt
import requests
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa


def _algorithm(key: object) -> str:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return {256: "ES256", 384: "ES384", 521: "ES512"}[key.curve.key_size]
    if isinstance(key, rsa.RSAPrivateKey):
        return "RS256"
    raise click.ClickException("the key must be EC or RSA")


@click.command("renew")
@click.argument("cert", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("key", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--ca-url", required=True, help="The CA's API, e.g. https://ca.example.com:8443")
@click.option("--root", "root", required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Root certificate(s) to trust for the CA's TLS.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to write the new certificate and chain (default: CERT).")
@click.option("--force-token", is_flag=True, help="Use the signed-token flow even while valid.")
def renew_cmd(cert: Path, key: Path, ca_url: str, root: Path, out: Path | None,
              force_token: bool) -> None:
    """Renew CERT (with its KEY) at the CA."""
    certificate = x509.load_pem_x509_certificates(cert.read_bytes())[0]
    private = serialization.load_pem_private_key(key.read_bytes(), None)
    url = ca_url.rstrip("/") + "/1.0/renew"
    now = datetime.now(UTC)
    valid = certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc
    try:
        resp = _post(url, cert, key, certificate, private, root, valid and not force_token)
    except requests.RequestException as exc:
        raise click.ClickException(f"cannot reach the CA at {url}: {exc}") from None
    if resp.status_code != 201:
        try:
            message = resp.json().get("message", resp.text)
        except ValueError:
            message = resp.text
        raise click.ClickException(f"renewal refused ({resp.status_code}): {message}")
    data = resp.json()
    target = out or cert
    tmp = target.with_name(target.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write("".join(data["certChain"][:-1]) if len(data["certChain"]) > 1 else data["crt"])
    os.replace(tmp, target)
    click.echo(f"renewed: serial {data['serial']} written to {target} "
               f"({'mTLS' if valid and not force_token else 'signed token'})")


def _post(url: str, cert: Path, key: Path, certificate: x509.Certificate, private: object,
          root: Path, mtls: bool) -> requests.Response:
    """mTLS with the certificate while it is valid; else a token signed by its key."""
    if mtls:
        return requests.post(url, cert=(str(cert), str(key)), verify=str(root), timeout=30)
    t = int(time.time())
    token = jwt.encode(
        {"aud": url, "iat": t, "nbf": t, "exp": t + 300, "jti": secrets.token_urlsafe(18),
         "sub": f"{certificate.serial_number:x}"},
        private, algorithm=_algorithm(private),  # type: ignore[arg-type]
        headers={"x5c": [base64.b64encode(
            certificate.public_bytes(serialization.Encoding.DER)).decode()]})
    return requests.post(url, headers={"Authorization": f"Bearer {token}"},
                         verify=str(root), timeout=30)
