"""What a ceremony will do, in words an operator and witnesses can check before it runs.

Printed before every run and alone with ``--dry-run``, which opens neither the
token nor any file for writing: references to things outside the script
(token keys, registered authorities) are named and checked when the ceremony
runs.
"""

from __future__ import annotations

from typing import Any

from appliance.ceremony import schema as s
from appliance.ceremony.script import LoadedScript
from appliance.x509.extensions import name


def describe(script: LoadedScript) -> list[str]:
    c = script.ceremony
    lines = [
        f"ceremony {c.name}: {c.description}".rstrip(": "),
        f"  script   {script.path} (SHA-256 {script.sha256})",
        f"  operators {', '.join(c.operators)}"
        + (f"; witnesses {', '.join(c.witnesses)}" if c.witnesses else ""),
    ]
    ids = {st.id for st in c.steps}

    def ref(value: str, what: str) -> str:
        return f"step {value}" if value in ids else f"existing {what} {value!r}"

    for n, st in enumerate(c.steps, 1):
        head = f"  {n}. [{st.id}] "
        lines.append(head + _one(st, ref))
        if st.quorum is not None:
            lines.append(f"       requires {st.quorum.required} of {', '.join(st.quorum.officers)}")
    return lines


def _one(st: Any, ref: Any) -> str:
    if isinstance(st, s.KeyStep):
        return f"generate {st.key_type} key {st.label!r} in the token"
    if isinstance(st, s.RootStep):
        return (f"self-sign root {name(st.subject).rfc4514_string()!r} with {ref(st.key, 'key')}, "
                f"{_validity(st.validity)}, path length {_pl(st.path_length)}; "
                f"register as authority {st.authority!r}")
    if isinstance(st, s.IntermediateStep):
        return (f"sign intermediate {name(st.subject).rfc4514_string()!r} for "
                f"{ref(st.key, 'key')} by {ref(st.issuer, 'authority')}, "
                f"{_validity(st.validity)}, path length {_pl(st.path_length)}; "
                f"register as {st.authority!r}")
    if isinstance(st, s.CrossStep):
        return (f"cross-sign {ref(st.subject_authority, 'authority')} by "
                f"{ref(st.issuer, 'authority')}, {_validity(st.validity)}; "
                f"register as {st.authority!r}")
    if isinstance(st, s.OcspSignerStep):
        return (f"sign OCSP responder {name(st.subject).rfc4514_string()!r} for "
                f"{ref(st.key, 'key')} by {ref(st.issuer, 'authority')}, "
                f"{_validity(st.validity)}; register as {st.authority!r}")
    if isinstance(st, s.CsrStep):
        return (f"make a CSR for {name(st.subject).rfc4514_string()!r} with "
                f"{ref(st.key, 'key')}")
    if isinstance(st, s.SignCsrStep):
        subject = name(st.subject).rfc4514_string() if st.subject else "as in the CSR"
        pinned = f" (SHA-256 {st.csr_sha256})" if st.csr_sha256 else ""
        return (f"sign the CSR {ref(st.csr, 'file')}{pinned} "
                f"as a CA certificate ({subject}) by {ref(st.issuer, 'authority')}, "
                f"{_validity(st.validity)}, path length {_pl(st.path_length)}; "
                f"register as {st.authority!r} (its key stays where the CSR was made)")
    if isinstance(st, s.ImportStep):
        return (f"import {st.certificate} (chain {len(st.chain)}, outside root {st.root}) for "
                f"{ref(st.key, 'key')}; check key, test signature, subject, chain; "
                f"register as {st.authority!r}")
    assert isinstance(st, s.CrlStep)
    return (f"sign a CRL of {ref(st.issuer, 'authority')} with {len(st.revoked)} listed "
            f"serial(s) and {len(st.revoke_authorities)} revoked authorit(ies), next update "
            f"in {st.next_update_days} days")


def _validity(v: s.Validity) -> str:
    start = v.not_before.isoformat() if v.not_before else "now"
    end = v.not_after.isoformat() if v.not_after else f"+{v.days} days"
    return f"valid {start} .. {end}"


def _pl(value: int | None) -> str:
    return "unlimited" if value is None else str(value)
