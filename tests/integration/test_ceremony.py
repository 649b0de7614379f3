"""Key ceremonies, run as an operator runs them: ``appliance ceremony run`` in its own
process against a real SoftHSM token, results checked with ``openssl`` and the signed
transcript.

Each test works on its own copy (``clone_data_dir``) of one of a few base data
directories built once per module: a fresh appliance (init + audit key), a
quickstarted one, and one on which ``byo-root-csr.yaml`` has run.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import itertools
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.ceremony_helpers import (
    CEREMONIES,
    audit_events,
    authorities,
    cert_text,
    cli,
    clone_data_dir,
    key_labels,
    openssl,
    quickstart_record,
    run_ceremony,
    sha256_file,
    snapshot,
    token_objects,
    write_script,
)
from tests.conftest import run_cli

Clone = Callable[[Path], Path]

# -- base data directories -----------------------------------------------------------------


@pytest.fixture(scope="module")
def fresh_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("ceremony-fresh") / "data"
    run_cli("init", "--dir", str(d), check=True)
    run_cli("hsm", "genkey", "--dir", str(d), "--label", "audit-key", "--type", "ec-p256",
            check=True)
    return d


@pytest.fixture(scope="module")
def qs_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("ceremony-qs") / "data"
    run_cli("quickstart", "--dir", str(d), check=True)
    return d


@pytest.fixture(scope="module")
def byo_base(tmp_path_factory: pytest.TempPathFactory, fresh_base: Path) -> tuple[Path, Path]:
    """A fresh appliance after byo-root-csr.yaml: key ``byo-issuing`` and its CSR."""
    top = tmp_path_factory.mktemp("ceremony-byo")
    d = clone_data_dir(fresh_base, top / "data")
    run_ceremony(d, CEREMONIES / "byo-root-csr.yaml", top / "csr-record", check=True)
    csr = top / "csr-record" / "byo-csr.csr.pem"
    assert csr.exists()
    return d, csr


@pytest.fixture
def clone(tmp_path: Path) -> Clone:
    counter = itertools.count()

    def make(base: Path) -> Path:
        return clone_data_dir(base, tmp_path / f"data{next(counter)}")

    return make


def _events_after(d: Path, seq: int) -> list[dict[str, Any]]:
    return [e for e in audit_events(d) if e["seq"] > seq]


def _last_seq(d: Path) -> int:
    events = audit_events(d)
    return events[-1]["seq"] if events else 0


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _spki(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)


def _verify_ok(*args: str) -> None:
    proc = openssl("verify", *args, check=False)
    assert proc.returncode == 0 and ": OK" in proc.stdout, proc.stdout + proc.stderr


def _script(name: str, steps: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"version": 1, "name": name, "operators": ["Test Operator"],
            "witnesses": ["Test Witness"], **extra, "steps": steps}


def _key(step_id: str, label: str, key_type: str = "ec-p256") -> dict[str, Any]:
    return {"id": step_id, "type": "key", "label": label, "key_type": key_type}


def _root(step_id: str, key: str, days: int, **extra: Any) -> dict[str, Any]:
    return {"id": step_id, "type": "root", "key": key, "authority": step_id,
            "subject": {"O": "Test", "CN": f"Test {step_id}"}, "validity": {"days": days},
            **extra}


def _intermediate(step_id: str, key: str, issuer: str, days: int,
                  **extra: Any) -> dict[str, Any]:
    step = {"id": step_id, "type": "intermediate", "key": key, "issuer": issuer,
            "authority": step_id, "subject": {"O": "Test", "CN": f"Test {step_id}"},
            "validity": {"days": days},
            "crl_urls": ["http://pki.example.com/crl/test.crl"],
            "ca_issuers_urls": ["http://pki.example.com/ca/test.crt"]}
    step.update(extra)
    return step


# -- 1. quickstart -------------------------------------------------------------------------


def test_quickstart_builds_a_verifiable_hierarchy(qs_base: Path) -> None:
    rows = {r["name"]: r for r in json.loads(
        cli(qs_base, "authority", "list", "--json", check=True).stdout)}
    assert set(rows) == {"root", "issuing", "issuing-ocsp"}
    assert (rows["root"]["kind"], rows["root"]["parent"]) == ("root", None)
    assert (rows["issuing"]["kind"], rows["issuing"]["parent"]) == ("intermediate", "root")
    assert (rows["issuing-ocsp"]["kind"], rows["issuing-ocsp"]["parent"]) == ("ocsp", "issuing")
    assert {r["status"] for r in rows.values()} == {"active"}

    rec = quickstart_record(qs_base)
    root, issuing, ocsp = rec / "root.pem", rec / "issuing.pem", rec / "ocsp.pem"
    _verify_ok("-x509_strict", "-CAfile", str(root), str(issuing))
    _verify_ok("-x509_strict", "-CAfile", str(root), "-untrusted", str(issuing), str(ocsp))
    for name, path in (("root", root), ("issuing", issuing), ("issuing-ocsp", ocsp)):
        assert rows[name]["fingerprint_sha256"] == hashlib.sha256(
            _cert(path).public_bytes(serialization.Encoding.DER)).hexdigest()

    text = cert_text(ocsp)
    assert "OCSP Signing" in text
    assert "OCSP No Check" in text
    assert "CA:FALSE" in text

    proc = cli(qs_base, "ceremony", "verify", str(rec / "transcript.json"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "transcript of quickstart: verified" in proc.stdout


# -- 2. three tiers ------------------------------------------------------------------------


def test_three_tier_rsa_root(fresh_base: Path, clone: Clone, tmp_path: Path) -> None:
    d = clone(fresh_base)
    script = CEREMONIES / "three-tier-rsa-root.yaml"
    out = tmp_path / "rec"
    run_ceremony(d, script, out, check=True)
    root, policy, issuing = out / "root.pem", out / "policy.pem", out / "issuing.pem"

    _verify_ok("-x509_strict", "-CAfile", str(root), str(root))
    _verify_ok("-x509_strict", "-CAfile", str(root), str(policy))
    _verify_ok("-x509_strict", "-policy_check", "-CAfile", str(root), "-untrusted", str(policy),
               str(issuing))

    texts = {n: cert_text(p) for n, p in (("root", root), ("policy", policy),
                                          ("issuing", issuing))}
    assert "Public-Key: (4096 bit)" in texts["root"]
    assert "NIST CURVE: P-384" in texts["policy"]
    assert "NIST CURVE: P-256" in texts["issuing"]
    for name, pathlen in (("root", 2), ("policy", 1), ("issuing", 0)):
        assert f"CA:TRUE, pathlen:{pathlen}" in texts[name], name

    steps = {s["id"]: s for s in yaml.safe_load(script.read_text())["steps"]}
    nc = steps["policy"]["name_constraints"]
    assert "X509v3 Name Constraints: critical" in texts["policy"]
    permitted, excluded = texts["policy"].split("Permitted:")[1].split("Excluded:")
    for dns in nc["permitted_dns"]:
        assert f"DNS:{dns}" in permitted
    assert "IP:10.0.0.0/255.0.0.0" in permitted
    for dns in nc["excluded_dns"]:
        assert f"DNS:{dns}" in excluded
    for name in ("policy", "issuing"):
        for oid in steps[name]["policies"]:
            assert f"Policy: {oid}" in texts[name]
        for url in steps[name]["crl_urls"]:
            assert f"URI:{url}" in texts[name]
        for url in steps[name]["ca_issuers_urls"]:
            assert f"CA Issuers - URI:{url}" in texts[name]
        for url in steps[name].get("ocsp_urls", []):
            assert f"OCSP - URI:{url}" in texts[name]
    assert "Policy: 2.23.140.1.2.2" not in texts["issuing"]

    transcript = json.loads((out / "transcript.json").read_text())
    assert transcript["status"] == "completed"
    assert transcript["operators"] == ["Key Ceremony Administrator"]
    assert transcript["witnesses"] == ["Internal Auditor"]
    assert {a["name"]: a["parent"] for a in authorities(d).values()} == {
        "corp-root": None, "corp-policy": "corp-root", "corp-issuing": "corp-policy"}


# -- 3. cross-signing ----------------------------------------------------------------------


def test_cross_sign(fresh_base: Path, clone: Clone, tmp_path: Path) -> None:
    d = clone(fresh_base)
    out = tmp_path / "rec"
    run_ceremony(d, CEREMONIES / "cross-sign.yaml", out, check=True)
    root_a, root_b = out / "root-a.pem", out / "root-b.pem"
    issuing, cross = out / "issuing-a.pem", out / "cross.pem"

    _verify_ok("-x509_strict", "-CAfile", str(root_a), str(issuing))
    _verify_ok("-x509_strict", "-CAfile", str(root_b), "-untrusted", str(cross), str(issuing))
    # Without the cross certificate root B is no anchor for A's hierarchy.
    assert openssl("verify", "-CAfile", str(root_b), str(issuing), check=False).returncode != 0

    a, x = _cert(root_a), _cert(cross)
    assert x.subject.public_bytes() == a.subject.public_bytes()
    assert _spki(x) == _spki(a)
    assert x.issuer.public_bytes() == _cert(root_b).subject.public_bytes()
    assert authorities(d)["root-a-by-b"]["parent"] == "root-b"


# -- 4. bring your own root ----------------------------------------------------------------

BYO_SUBJECT = "/C=US/O=Example Corp/CN=Example Corp Issuing CA (BYO root)"
OUTSIDE_ROOT_SUBJECT = "/O=Outside Trust/CN=Outside Root"
CA_EXT = ("basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\n"
          "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid:always\n")
NOT_CA_EXT = ("basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
              "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid:always\n")


@pytest.fixture(scope="module")
def outside_pki(tmp_path_factory: pytest.TempPathFactory,
                byo_base: tuple[Path, Path]) -> dict[str, Path]:
    """An outside root (openssl) and the certificates it returns for our CSR: the good one
    and each kind the import must refuse."""
    _, csr = byo_base
    w = tmp_path_factory.mktemp("outside-pki")
    (w / "ca.ext").write_text(CA_EXT)
    (w / "not-ca.ext").write_text(NOT_CA_EXT)
    for name in ("root", "root2"):  # root2: same name as root, another key
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384",
                "-nodes", "-keyout", str(w / f"{name}.key"), "-out", str(w / f"{name}.pem"),
                "-subj", OUTSIDE_ROOT_SUBJECT, "-days", "3650", "-sha384",
                "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign")

    def sign(out: str, request: Path, *, by: str = "root", ext: str = "ca.ext",
             extra: tuple[str, ...] = ()) -> Path:
        openssl("x509", "-req", "-in", str(request), "-CA", str(w / f"{by}.pem"),
                "-CAkey", str(w / f"{by}.key"), "-set_serial", "0x" + out.encode().hex(),
                "-days", "1825", "-sha384", "-extfile", str(w / ext), *extra,
                "-out", str(w / out))
        return w / out

    certs = {"root": w / "root.pem", "good": sign("good.pem", csr)}
    openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384", "-nodes",
            "-keyout", str(w / "other.key"), "-subj", BYO_SUBJECT, "-out", str(w / "other.csr"))
    certs["other_key"] = sign("other-key.pem", w / "other.csr")
    certs["other_subject"] = sign("other-subject.pem", csr, extra=(
        "-subj", "/C=US/O=Example Corp/CN=Example Corp Issuing CA (someone else)"))
    certs["other_root"] = sign("other-root.pem", csr, by="root2")
    certs["not_ca"] = sign("not-ca.pem", csr, ext="not-ca.ext")
    der = bytearray(_cert(certs["good"]).public_bytes(serialization.Encoding.DER))
    der[-1] ^= 0x01  # the last byte of the signature
    tampered = x509.load_der_x509_certificate(bytes(der))  # still parses
    assert tampered.tbs_certificate_bytes == _cert(certs["good"]).tbs_certificate_bytes
    certs["tampered"] = w / "tampered.pem"
    certs["tampered"].write_text("-----BEGIN CERTIFICATE-----\n" + "\n".join(
        base64.encodebytes(bytes(der)).decode().split()) + "\n-----END CERTIFICATE-----\n")
    return certs


def _import_folder(top: Path, csr: Path, certificate: Path, root: Path) -> Path:
    """byo-root-import.yaml with the outside root's files laid out next to it."""
    top.mkdir()
    script = top / "byo-root-import.yaml"
    shutil.copy(CEREMONIES / "byo-root-import.yaml", script)
    (top / "byo").mkdir()
    shutil.copy(certificate, top / "byo" / "intermediate.pem")
    shutil.copy(root, top / "byo" / "outside-root.pem")
    shutil.copy(csr, top / "byo" / "byo-csr.csr.pem")
    return script


def test_byo_root_import(byo_base: tuple[Path, Path], outside_pki: dict[str, Path],
                         clone: Clone, tmp_path: Path) -> None:
    base, csr = byo_base
    d = clone(base)
    script = _import_folder(tmp_path / "import", csr, outside_pki["good"], outside_pki["root"])
    out = tmp_path / "rec"
    run_ceremony(d, script, out, check=True)

    rows = {r["name"]: r for r in json.loads(
        cli(d, "authority", "list", "--json", check=True).stdout)}
    assert rows["byo-issuing"]["parent"] == "byo-issuing-root"
    assert rows["byo-issuing"]["kind"] == "intermediate"
    assert rows["byo-issuing"]["key_label"] == "byo-issuing"
    assert rows["byo-issuing-root"]["kind"] == "external-root"
    assert rows["byo-issuing-root"]["parent"] is None
    assert rows["byo-issuing-root"]["key_label"] is None

    imported = out / "import.pem"
    assert imported.read_text().count("BEGIN CERTIFICATE") == 2
    _verify_ok("-x509_strict", "-CAfile", str(outside_pki["root"]), str(imported))
    (event,) = [e for e in audit_events(d) if e["event_type"] == "ceremony.import"]
    assert event["outcome"] == "success"
    assert event["object_ids"]["authority"] == "byo-issuing"


@pytest.mark.parametrize(("case", "reason"), [
    ("other_key", "public key is not the token key's"),
    ("other_subject", "differs from the expected"),
    ("tampered", "is not signed by"),
    ("other_root", "is not signed by"),
    ("not_ca", "is not a CA (basicConstraints CA:FALSE)"),
])
def test_byo_root_import_refusals(case: str, reason: str, byo_base: tuple[Path, Path],
                                  outside_pki: dict[str, Path], clone: Clone,
                                  tmp_path: Path) -> None:
    base, csr = byo_base
    d = clone(base)
    before = authorities(d)
    seq = _last_seq(d)
    script = _import_folder(tmp_path / "import", csr, outside_pki[case], outside_pki["root"])
    proc = run_ceremony(d, script, tmp_path / "rec")

    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "error [ceremony_error]: import import refused" in proc.stderr
    assert reason in proc.stderr
    assert authorities(d) == before
    refused = [e for e in _events_after(d, seq) if e["event_type"] == "ceremony.import.refused"]
    assert len(refused) == 1
    assert refused[0]["outcome"] == "denied"
    assert reason in refused[0]["details"]["reason"]
    assert not [e for e in _events_after(d, seq) if e["event_type"] == "ceremony.import"]
    assert not (tmp_path / "rec" / "import.pem").exists()


# -- 5. offline CRL of the root ------------------------------------------------------------


def _crl_number(path: Path) -> int:
    crl = x509.load_der_x509_crl(path.read_bytes())
    return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number


def test_root_crl(qs_base: Path, clone: Clone, tmp_path: Path) -> None:
    d = clone(qs_base)
    rec = quickstart_record(d)
    root, issuing = rec / "root.pem", rec / "issuing.pem"
    script = CEREMONIES / "root-crl.yaml"

    run_ceremony(d, script, tmp_path / "crl1", check=True)
    run_ceremony(d, script, tmp_path / "crl2", check=True)
    crl1, crl2 = tmp_path / "crl1" / "root-crl.crl", tmp_path / "crl2" / "root-crl.crl"
    assert (_crl_number(crl1), _crl_number(crl2)) == (1, 2)
    proc = openssl("crl", "-inform", "DER", "-in", str(crl1), "-CAfile", str(root), "-noout")
    assert "verify OK" in proc.stdout + proc.stderr
    crl1_pem = tmp_path / "crl1.pem"
    openssl("crl", "-inform", "DER", "-in", str(crl1), "-out", str(crl1_pem))
    _verify_ok("-crl_check", "-CRLfile", str(crl1_pem), "-CAfile", str(root), str(issuing))

    doc = yaml.safe_load(script.read_text())
    doc["steps"][0]["revoke_authorities"] = ["issuing"]
    revoke = write_script(tmp_path / "revoke-issuing.yaml", doc)
    run_ceremony(d, revoke, tmp_path / "crl3", check=True)
    crl3 = tmp_path / "crl3" / "root-crl.crl"
    assert _crl_number(crl3) == 3
    crl3_pem = tmp_path / "crl3.pem"
    openssl("crl", "-inform", "DER", "-in", str(crl3), "-out", str(crl3_pem))
    proc = openssl("verify", "-crl_check", "-CRLfile", str(crl3_pem), "-CAfile", str(root),
                   str(issuing), check=False)
    assert proc.returncode != 0
    assert "certificate revoked" in proc.stdout + proc.stderr
    revoked = x509.load_der_x509_crl(crl3.read_bytes())
    assert revoked.get_revoked_certificate_by_serial_number(_cert(issuing).serial_number)

    rows = {r["name"]: r for r in json.loads(
        cli(d, "authority", "list", "--json", check=True).stdout)}
    assert rows["issuing"]["status"] == "revoked"
    assert rows["root"]["status"] == "active"


# -- 6. strict schema ----------------------------------------------------------------------

_VALID = _script("schema-check", [_key("k", "schema-key"), _root("r", "k", 365)])


def _mutated(change: Callable[[dict[str, Any]], None]) -> str:
    doc = copy.deepcopy(_VALID)
    change(doc)
    return yaml.safe_dump(doc, sort_keys=False)


def _set(path: tuple[Any, ...], value: Any) -> Callable[[dict[str, Any]], None]:
    def change(doc: dict[str, Any]) -> None:
        target = doc
        for p in path[:-1]:
            target = target[p]
        target[path[-1]] = value
    return change


SCHEMA_CASES = {
    "unknown_key": (_mutated(_set(("steps", 1, "path_lenght"), 1)), "path_lenght"),
    "second_document": (_mutated(lambda d: None) + "---\n" + _mutated(lambda d: None),
                        "expected exactly one YAML mapping"),
    "wrong_type": (_mutated(_set(("steps", 1, "validity", "days"), "ten")), "validity.days"),
    "duplicate_id": (_mutated(lambda d: d["steps"].append(_key("k", "another-label"))),
                     "step id 'k' is used twice"),
    "later_reference": (_mutated(lambda d: d["steps"].reverse()),
                        "'k' names a step that does not come before it"),
    "eku_on_root": (_mutated(_set(("steps", 1, "extended_key_usage"), ["server_auth"])),
                    "a root certificate carries no extended key usage"),
}


@pytest.mark.parametrize("case", list(SCHEMA_CASES))
def test_invalid_scripts_are_refused_before_the_token_is_used(
        case: str, fresh_base: Path, clone: Clone, tmp_path: Path) -> None:
    text, fragment = SCHEMA_CASES[case]
    d = clone(fresh_base)
    before = snapshot(d)
    script = tmp_path / "bad.yaml"
    script.write_text(text)
    out = tmp_path / "rec"
    proc = run_ceremony(d, script, out)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "error [config_error]" in proc.stderr and fragment in proc.stderr, proc.stderr
    assert "[1/" not in proc.stdout
    assert snapshot(d) == before  # no audit event, no token object, no database change
    assert not out.exists() and not (d / "ceremonies").exists()


# -- 7. safety refusals --------------------------------------------------------------------


def test_existing_key_label_is_refused_and_later_steps_do_not_run(
        qs_base: Path, clone: Clone, tmp_path: Path) -> None:
    d = clone(qs_base)
    objects = token_objects(d)
    script = write_script(tmp_path / "s.yaml", _script("dup-label", [
        _key("k1", "root-ca"), _key("k2", "never-made")]))
    proc = run_ceremony(d, script, tmp_path / "rec")
    assert proc.returncode == 1
    assert "error [key_exists]" in proc.stderr and "root-ca" in proc.stderr
    assert "[2/2]" not in proc.stdout
    assert token_objects(d) == objects
    assert "never-made" not in key_labels(d)
    assert not (tmp_path / "rec" / "k2.pub.pem").exists()


def test_non_empty_out_folder_is_refused_before_anything_is_generated(
        fresh_base: Path, clone: Clone, tmp_path: Path) -> None:
    d = clone(fresh_base)
    before = snapshot(d)
    out = tmp_path / "rec"
    out.mkdir()
    (out / "keep.txt").write_text("earlier record\n")
    proc = run_ceremony(d, CEREMONIES / "quickstart.yaml", out)
    assert proc.returncode == 1
    assert "already exists and is not empty" in proc.stderr
    assert "[1/" not in proc.stdout
    assert snapshot(d) == before
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert (out / "keep.txt").read_text() == "earlier record\n"


VALIDITY_CASES = {
    "root_over_cap": ("fresh", [_key("k", "cap-root"), _root("capped", "k", 9200)],
                      "validity of 9200 days exceeds the cap of 9131 days"),
    "intermediate_over_cap": ("qs", [_key("k", "cap-int"),
                                     _intermediate("capped", "k", "root", 2923)],
                              "validity of 2923 days exceeds the cap of 2922 days"),
    "beyond_issuer": ("fresh", [_key("rk", "short-root"),
                                _root("short", "rk", 365, path_length=1),
                                _key("k", "long-int"), _intermediate("capped", "k", "short", 400)],
                      "validity must lie within the issuer's"),
    "no_crl_urls": ("qs", [_key("k", "no-crl"),
                           {**_intermediate("capped", "k", "root", 365), "crl_urls": []}],
                    "a subordinate CA needs crl_urls"),
}


@pytest.mark.parametrize("case", list(VALIDITY_CASES))
def test_certificate_safety_limits(case: str, fresh_base: Path, qs_base: Path, clone: Clone,
                                   tmp_path: Path) -> None:
    base, steps, fragment = VALIDITY_CASES[case]
    d = clone(fresh_base if base == "fresh" else qs_base)
    script = write_script(tmp_path / "s.yaml", _script("limits", steps))
    out = tmp_path / "rec"
    proc = run_ceremony(d, script, out)
    assert proc.returncode == 1, proc.stdout
    assert "error [ceremony_error]" in proc.stderr and fragment in proc.stderr, proc.stderr
    assert "capped" not in authorities(d)
    assert not (out / "capped.pem").exists()
    assert not [e for e in audit_events(d) if e["event_type"] == "certificate.signed"
                and e["object_ids"].get("authority") == "capped"]


# -- 8. lint gate --------------------------------------------------------------------------

LINT_CODE = "pkix.key_usage_value_prohibited_for_ec"


def _lint_script(path: Path, skip: list[str]) -> Path:
    # keyEncipherment on an EC key: the schema allows the name, RFC 5480 does not.
    step = _intermediate("lint-int", "k", "root", 365,
                         key_usage=["key_cert_sign", "crl_sign", "key_encipherment"])
    if skip:
        step["skip_lints"] = skip
    return write_script(path, _script("lint-gate", [_key("k", "lint-int-key"), step]))


def test_lint_gate_refuses_and_skip_lints_is_recorded(qs_base: Path, clone: Clone,
                                                      tmp_path: Path) -> None:
    d = clone(qs_base)
    proc = run_ceremony(d, _lint_script(tmp_path / "lint.yaml", []), tmp_path / "rec1")
    assert proc.returncode == 1
    assert "error [lint_failed]" in proc.stderr and LINT_CODE in proc.stderr, proc.stderr
    assert "lint-int" not in authorities(d)
    assert not (tmp_path / "rec1" / "lint-int.pem").exists()

    d2 = clone(qs_base)
    run_ceremony(d2, _lint_script(tmp_path / "lint-skip.yaml", [LINT_CODE]), tmp_path / "rec2",
                 check=True)
    assert "Key Encipherment" in cert_text(tmp_path / "rec2" / "lint-int.pem")
    (signed,) = [e for e in audit_events(d2) if e["event_type"] == "certificate.signed"
                 and e["object_ids"]["authority"] == "lint-int"]
    assert signed["details"]["skipped_lints"] == [LINT_CODE]


# -- 9. dry run ----------------------------------------------------------------------------


def test_dry_run_prints_the_plan_and_changes_nothing(fresh_base: Path, clone: Clone,
                                                     tmp_path: Path) -> None:
    d = clone(fresh_base)
    before = snapshot(d)
    script = CEREMONIES / "three-tier-rsa-root.yaml"
    out = tmp_path / "rec"
    proc = run_ceremony(d, script, out, "--dry-run")
    assert proc.returncode == 0, proc.stderr
    steps = yaml.safe_load(script.read_text())["steps"]
    for n, step in enumerate(steps, 1):
        assert f"  {n}. [{step['id']}] " in proc.stdout
    assert "generate rsa-4096 key 'corp-root-2026' in the token" in proc.stdout
    assert "dry run: nothing was created, signed or written" in proc.stdout
    assert "[1/" not in proc.stdout
    assert snapshot(d) == before
    assert not out.exists() and not (d / "ceremonies").exists()


# -- 10. dual control ----------------------------------------------------------------------

SECRETS = {"alice": "alice-correct-horse-1", "bob": "bob-battery-staple-22",
           "carol": "carol-tr0ub4dor-333"}
WRONG_SECRET = "bob-wrong-guess-4444"
MALLORY_SECRET = "mallory-outsider-555"


@pytest.fixture(scope="module")
def verifiers() -> dict[str, str]:
    """Verifiers as officers make them; ``carol-shares-bob`` is a second verifier of bob's
    secret (another salt), for an officer who shares bob's secret."""
    out = {}
    for name, secret in [*SECRETS.items(), ("carol-shares-bob", SECRETS["bob"])]:
        proc = run_cli("ceremony", "officer-verifier", input=secret + "\n", check=True)
        out[name] = proc.stdout.strip()
        assert secret not in proc.stdout
    assert out["carol-shares-bob"] != out["bob"]
    return out


def _dual_control_script(path: Path, officers: dict[str, str]) -> Path:
    key = {**_key("dc-key", "dc-root-key"),
           "quorum": {"required": 2, "officers": ["alice", "bob", "carol"]}}
    return write_script(path, _script("dual-control", [key, _root("dc-root", "dc-key", 365)],
                                      officers=officers))


def _all_secrets() -> list[str]:
    return [*SECRETS.values(), WRONG_SECRET, MALLORY_SECRET]


def test_dual_control_quorum_met(fresh_base: Path, verifiers: dict[str, str], clone: Clone,
                                 tmp_path: Path) -> None:
    d = clone(fresh_base)
    officers = {n: verifiers[n] for n in SECRETS}
    script = _dual_control_script(tmp_path / "dc.yaml", officers)
    out = tmp_path / "rec"
    stdin = f"alice\n{SECRETS['alice']}\nbob\n{SECRETS['bob']}\n"
    proc = run_ceremony(d, script, out, input=stdin)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    transcript = json.loads((out / "transcript.json").read_text())
    key_step = transcript["steps"][0]
    assert key_step["id"] == "dc-key"
    assert key_step["quorum"] == {"required": 2, "officers": ["alice", "bob"]}
    (met,) = [e for e in audit_events(d) if e["event_type"] == "ceremony.quorum.met"]
    assert met["details"]["officers"] == ["alice", "bob"]
    assert "dc-root-key" in key_labels(d) and "dc-root" in authorities(d)

    export = cli(d, "audit", "export", check=True).stdout
    for secret in _all_secrets():
        for text in (proc.stdout, proc.stderr, export, (out / "transcript.json").read_text()):
            assert secret not in text


DC_REFUSALS = {
    "same_officer_twice": (None, ["alice", "alice"], "an officer authenticated twice"),
    "shared_secret": ("carol-shares-bob", ["bob", "carol"],
                      "two officers presented the same secret"),
    "wrong_secret": (None, ["alice", "bob!"], "authentication failed for bob"),
    "not_an_officer": (None, ["alice", "mallory"], "not officers of this step: mallory"),
}


@pytest.mark.parametrize("case", list(DC_REFUSALS))
def test_dual_control_refusals(case: str, fresh_base: Path, verifiers: dict[str, str],
                               clone: Clone, tmp_path: Path) -> None:
    carol_verifier, who, reason = DC_REFUSALS[case]
    d = clone(fresh_base)
    officers = {n: verifiers[n] for n in SECRETS}
    if carol_verifier:
        officers["carol"] = verifiers[carol_verifier]
    script = _dual_control_script(tmp_path / "dc.yaml", officers)
    secret_of = {**SECRETS, "bob!": WRONG_SECRET, "mallory": MALLORY_SECRET}
    if case == "shared_secret":
        secret_of["carol"] = SECRETS["bob"]
    stdin = "".join(f"{name.rstrip('!')}\n{secret_of[name]}\n" for name in who)
    objects, seq = token_objects(d), _last_seq(d)
    out = tmp_path / "rec"
    proc = run_ceremony(d, script, out, input=stdin)

    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "error [quorum_refused]" in proc.stderr and reason in proc.stderr, proc.stderr
    new = _events_after(d, seq)
    refused = [e for e in new if e["event_type"] == "ceremony.quorum.refused"]
    assert len(refused) == 1 and refused[0]["outcome"] == "denied"
    assert reason in refused[0]["details"]["reason"]
    assert not [e for e in new if e["event_type"] in ("ceremony.quorum.met", "key.generated",
                                                      "certificate.signed")]
    assert token_objects(d) == objects
    assert "dc-root-key" not in key_labels(d) and "dc-root" not in authorities(d)
    assert not (out / "dc-key.pub.pem").exists() and not (out / "dc-root.pem").exists()
    for secret in _all_secrets():
        assert secret not in proc.stdout and secret not in proc.stderr
        assert all(secret not in e["raw"] for e in audit_events(d))
        assert secret not in (out / "transcript.json").read_text()
    t = json.loads((out / "transcript.json").read_text())
    assert t["status"] == "refused" and reason in t["error"]
    assert t["failed_step"] == {"number": 1, "id": "dc-key", "type": "key"}
    if case == "wrong_secret":  # the verdict on a refused ceremony, once (a CLI run each)
        proc = cli(d, "ceremony", "verify", str(out / "transcript.json"))
        assert proc.returncode == 3, proc.stdout + proc.stderr
        assert "BAD" not in proc.stdout
        assert (f"transcript of dual-control: verified; ceremony refused at step 1 "
                f"(dc-key, key): QuorumError: step dc-key: {reason}") in proc.stdout
        allowed = cli(d, "ceremony", "verify", str(out / "transcript.json"), "--allow-failed")
        assert allowed.returncode == 0, allowed.stdout + allowed.stderr
        assert "ceremony refused at step 1" in allowed.stdout


# -- 11. transcript ------------------------------------------------------------------------


def test_transcript_contents(qs_base: Path) -> None:
    rec = quickstart_record(qs_base)
    t = json.loads((rec / "transcript.json").read_text())
    assert t["status"] == "completed" and t["error"] is None
    script_sha = sha256_file(rec / "script.yaml")
    assert t["script"]["sha256"] == script_sha == sha256_file(CEREMONIES / "quickstart.yaml")
    assert t["operators"] == ["appliance quickstart"] and t["witnesses"] == []
    assert t["signature"]["key_label"] == "audit-key"

    keys = {k["label"]: k for k in json.loads(
        cli(qs_base, "hsm", "keys", "--json", check=True).stdout)}
    events = [json.loads(line) for line in
              cli(qs_base, "audit", "export", check=True).stdout.splitlines()]
    serials = {e["details"]["token_serial"] for e in events if e["event_type"] == "key.generated"}
    assert len(serials) == 1
    assert t["token"]["serial"] in serials

    assert [s["id"] for s in t["steps"]] == ["root-key", "root", "issuing-key", "issuing",
                                             "ocsp-key", "ocsp"]
    for step in t["steps"]:
        assert step["started"] <= step["finished"]
        assert step["token"]["serial"] == t["token"]["serial"]
        key = step["key"]
        assert key["ck_id"] == keys[key["label"]]["id"]
        assert key["spki_sha256"] == keys[key["label"]]["spki_sha256"]
        if step["type"] == "key":
            pub = serialization.load_pem_public_key((rec / f"{step['id']}.pub.pem").read_bytes())
            spki = pub.public_bytes(serialization.Encoding.DER,
                                    serialization.PublicFormat.SubjectPublicKeyInfo)
            assert key["spki_sha256"] == hashlib.sha256(spki).hexdigest()
        else:
            cert = _cert(rec / f"{step['id']}.pem")
            assert step["certificate"]["sha256"] == hashlib.sha256(
                cert.public_bytes(serialization.Encoding.DER)).hexdigest()
            assert step["certificate"]["serial"] == f"{cert.serial_number:x}"
            assert key["spki_sha256"] == hashlib.sha256(_spki(cert)).hexdigest()

    files = {p.name for p in rec.iterdir()} - {"transcript.json"}  # script.yaml included
    assert set(t["outputs"]) == files
    for name, digest in t["outputs"].items():
        assert sha256_file(rec / name) == digest

    by_seq = {e["seq"]: e for e in events}
    first, last = t["audit"]["first_seq"], t["audit"]["last_seq"]
    assert by_seq[first]["event_type"] == "ceremony.started"
    assert by_seq[first]["details"]["script_sha256"] == script_sha
    assert by_seq[last]["event_type"] == "ceremony.finished"
    assert by_seq[last + 1]["event_type"] == "ceremony.transcript.signed"
    assert by_seq[last + 1]["details"]["transcript_sha256"] == sha256_file(
        rec / "transcript.json")
    inside = [by_seq[s]["event_type"] for s in range(first, last + 1)]
    assert inside.count("key.generated") == 3 and inside.count("certificate.signed") == 3


def _edit_serial(rec: Path) -> None:
    t = json.loads((rec / "transcript.json").read_text())
    serial = t["steps"][1]["certificate"]["serial"]
    t["steps"][1]["certificate"]["serial"] = ("1" if serial[0] != "1" else "2") + serial[1:]
    (rec / "transcript.json").write_text(json.dumps(t, indent=2, sort_keys=True) + "\n")


def _edit_pem(rec: Path) -> None:
    (rec / "root.pem").write_text((rec / "root.pem").read_text() + "\n")


TAMPERING = {
    "transcript_serial": (_edit_serial, "the signature does not verify with the audit key"),
    "output_pem": (_edit_pem, "root.pem does not match its recorded SHA-256"),
    "deleted_output": (lambda rec: (rec / "issuing.pem").unlink(), "issuing.pem is missing"),
    "script": (lambda rec: (rec / "script.yaml").write_text(
        (rec / "script.yaml").read_text().replace("days: 3650", "days: 3651")),
        "script.yaml does not match its recorded SHA-256"),
    "extra_file": (lambda rec: (rec / "rogue.pem").write_text("planted\n"),
                   "rogue.pem is in the record folder but not in the transcript"),
}


@pytest.mark.parametrize("case", [None, *TAMPERING])
def test_transcript_verify_detects_tampering(case: str | None, qs_base: Path,
                                             tmp_path: Path) -> None:
    rec = tmp_path / "record"
    shutil.copytree(quickstart_record(qs_base), rec)
    if case is not None:
        edit, problem = TAMPERING[case]
        edit(rec)
    proc = cli(qs_base, "ceremony", "verify", str(rec / "transcript.json"))
    if case is None:
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "BAD" not in proc.stdout
        return
    assert proc.returncode == 1, proc.stdout
    assert f"BAD  {problem}" in proc.stdout
    assert "NOT VALID" in proc.stdout


# -- 12. a failed ceremony -----------------------------------------------------------------


def test_failed_ceremony_leaves_a_signed_transcript(fresh_base: Path, clone: Clone,
                                                    tmp_path: Path) -> None:
    d = clone(fresh_base)
    script = write_script(tmp_path / "fail.yaml", _script("fails-at-step-2", [
        _key("k", "fail-root-key"), _root("too-long", "k", 9200), _key("k2", "never-made")]))
    out = tmp_path / "rec"
    proc = run_ceremony(d, script, out)
    assert proc.returncode == 1
    assert "[3/3]" not in proc.stdout

    t = json.loads((out / "transcript.json").read_text())
    assert t["status"] == "failed"
    assert "exceeds the cap" in t["error"]
    assert [s["id"] for s in t["steps"]] == ["k"]
    assert set(t["outputs"]) == {"script.yaml", "k.pub.pem"}
    assert sha256_file(out / "k.pub.pem") == t["outputs"]["k.pub.pem"]
    assert "fail-root-key" in key_labels(d) and "never-made" not in key_labels(d)
    assert "too-long" not in authorities(d)

    assert t["failed_step"] == {"number": 2, "id": "too-long", "type": "root"}
    verdict = cli(d, "ceremony", "verify", str(out / "transcript.json"), "--json")
    assert verdict.returncode == 3, verdict.stdout + verdict.stderr
    doc = json.loads(verdict.stdout)
    assert doc["ok"] is True and doc["problems"] == [] and doc["status"] == "failed"
    assert doc["ceremony"] == "fails-at-step-2" and doc["failed_step"]["number"] == 2
    assert doc["outcome"].startswith("failed at step 2 (too-long, root): ")
    assert "exceeds the cap" in doc["outcome"]
    ok = cli(d, "ceremony", "verify", str(out / "transcript.json"), "--allow-failed")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "verified; ceremony failed at step 2 (too-long, root)" in ok.stdout
    # an edited status is an edit like any other: the signature no longer holds
    t["status"], t["error"], t["failed_step"] = "completed", None, None
    (out / "transcript.json").write_text(json.dumps(t, indent=2, sort_keys=True) + "\n")
    forged = cli(d, "ceremony", "verify", str(out / "transcript.json"))
    assert forged.returncode == 1 and "NOT VALID" in forged.stdout

    by_seq = {e["seq"]: e for e in audit_events(d)}
    failed = by_seq[t["audit"]["last_seq"]]
    assert failed["event_type"] == "ceremony.failed" and failed["outcome"] == "failure"
    assert "exceeds the cap" in failed["details"]["error"]
    assert by_seq[t["audit"]["first_seq"]]["event_type"] == "ceremony.started"


# -- the OCSP signer rotation example -----------------------------------------------------


def test_ocsp_signer_rotation_example(qs_base: Path, clone: Clone, tmp_path: Path) -> None:
    d = clone(qs_base)
    out = tmp_path / "rec"
    run_ceremony(d, CEREMONIES / "ocsp-signer.yaml", out, check=True)
    rows = authorities(d)
    assert rows["issuing-ocsp-2"]["kind"] == "ocsp"
    assert rows["issuing-ocsp-2"]["parent"] == "issuing"
    rec = quickstart_record(d)
    _verify_ok("-x509_strict", "-CAfile", str(rec / "root.pem"), "-untrusted",
               str(rec / "issuing.pem"), str(out / "ocsp-2.pem"))
    text = cert_text(out / "ocsp-2.pem")
    assert "OCSP Signing" in text and "OCSP No Check" in text and "CA:FALSE" in text
    days = (_cert(out / "ocsp-2.pem").not_valid_after_utc
            - _cert(out / "ocsp-2.pem").not_valid_before_utc).days
    assert days == 365
    assert cli(d, "ceremony", "verify", str(out / "transcript.json")).returncode == 0
