#!/usr/bin/env python3
"""In-process CPU per certificate of ``POST /1.0/sign`` (issue 16), with an optional profile.

Runs the real Flask application (``create_app``) on a data directory made by ``appliance
quickstart`` through Flask's test client: no sockets and no API server, so what it measures
is the path from the body to the response (token, pipeline, lint, token signature, store,
audit, OCSP, JSON). CSRs and one-time tokens are made before the clock starts; every
response is checked (201, a certificate whose SANs are the request's). CPU time is this
process's (``time.process_time``), reported per certificate over ``--rounds`` rounds of
``--count`` certificates after a warm-up. Never asserts on time.

    .venv/bin/python bench/sign_inprocess.py --dir /tmp/sp-qs [--count 300] [--rounds 3]
        [--profile tottime|cumulative] [--lines 40]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from appliance import config
from appliance.provisioners import tokens
from appliance.provisioners.settings import sign_audience
from appliance.runtime import Appliance
from appliance.web.app import create_app
from tests.service_helpers import provisioner_key


def requests_for(data_dir: Path, cfg: Any, n: int, tag: str) -> list[tuple[bytes, str]]:
    """``n`` sign bodies (CSR of a fresh P-256 key, one-time token for its name)."""
    key = provisioner_key(data_dir)
    svc = cfg.service
    audience = sign_audience(svc.api_hostname, svc.api_listen)
    out = []
    for i in range(n):
        name = f"h{i}-{tag}.example.com"
        k = ec.generate_private_key(ec.SECP256R1())
        csr = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
               .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
               .sign(k, hashes.SHA256()))
        pem = csr.public_bytes(serialization.Encoding.PEM).decode()
        ott = tokens.mint(key, provisioner="admin", audience=audience, sans=[name],
                          lifetime=1800)
        out.append((json.dumps({"csr": pem, "ott": ott}).encode(), name))
    return out


def run(client: Any, host: str, items: list[tuple[bytes, str]]) -> float:
    t0 = time.process_time()
    for body, name in items:
        r = client.post("/1.0/sign", data=body, headers={"Host": host,
                                                         "Content-Type": "application/json"})
        if r.status_code != 201:
            raise SystemExit(f"sign failed: {r.status_code} {r.get_data(as_text=True)[:300]}")
        doc = r.get_json()
        cert = x509.load_pem_x509_certificate(doc["crt"].encode())
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        if sans.get_values_for_type(x509.DNSName) != [name]:
            raise SystemExit(f"wrong certificate for {name}")
    return time.process_time() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, required=True, help="a quickstart data directory")
    ap.add_argument("--count", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--profile", choices=("tottime", "cumulative"))
    ap.add_argument("--lines", type=int, default=40)
    args = ap.parse_args()

    cfg_path = args.dir / "appliance.yaml"
    app = Appliance(config.load(cfg_path))
    flask_app = create_app(app)
    client = flask_app.test_client()
    svc = app.settings.config.service
    host = svc.api_listen
    # The result check above is part of the loop: measure it alone to subtract it.
    warm = requests_for(args.dir, app.settings.config, args.warmup, f"w{time.time_ns()}")
    run(client, host, warm)
    per_cert = []
    for r in range(args.rounds):
        items = requests_for(args.dir, app.settings.config, args.count,
                             f"r{r}-{time.time_ns()}")
        last = args.profile and r == args.rounds - 1
        prof = cProfile.Profile(time.process_time) if last else None
        if prof is not None:
            prof.enable()
        cpu = run(client, host, items)
        if prof is not None:
            prof.disable()
            s = io.StringIO()
            pstats.Stats(prof, stream=s).sort_stats(args.profile).print_stats(args.lines)
            print(s.getvalue())
        else:
            per_cert.append(cpu * 1000 / args.count)
            print(f"round {r + 1}: {per_cert[-1]:.2f} ms CPU per certificate")
    if per_cert:
        print(f"median {statistics.median(per_cert):.2f} ms CPU per certificate "
              f"(min {min(per_cert):.2f}), {args.count} per round")
    app.close()


if __name__ == "__main__":
    main()
