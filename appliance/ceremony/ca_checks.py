"""Is a certificate a CA that may sign now, and may this issuer sign a CA below it?

Asked of an issuer before a ceremony signs with it and of every certificate of an
imported chain, so both refuse with the same reasons.
"""

from __future__ import annotations

from cryptography import x509

from appliance.ceremony import x509build as xb
from appliance.ceremony.context import CaRef, utc_now
from appliance.rfc3339 import format_z


def ca_problems(cert: x509.Certificate, what: str) -> list[str]:
    out = []
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        if not bc.ca:
            out.append(f"{what} is not a CA (basicConstraints CA:FALSE)")
    except x509.ExtensionNotFound:
        out.append(f"{what} has no basicConstraints")
    try:
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        if not ku.key_cert_sign:
            out.append(f"{what} may not sign certificates (no keyCertSign)")
    except x509.ExtensionNotFound:
        out.append(f"{what} has no keyUsage")
    now = utc_now()
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        out.append(f"{what} is not valid now ({format_z(cert.not_valid_before_utc)} .. "
                   f"{format_z(cert.not_valid_after_utc)})")
    return out


def check_issuer_can_sign(issuer: CaRef, child_path_length: int | None, *,
                          child_is_ca: bool = True) -> None:
    """The issuer is a valid CA now, and (for a CA below it) its path length leaves room."""
    cert = issuer.cert
    problems = ca_problems(cert, f"issuer {issuer.name}")
    if problems:
        raise xb.CeremonyError("; ".join(problems))
    if not child_is_ca:
        return
    limit = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length
    if limit == 0:
        raise xb.CeremonyError(f"issuer {issuer.name} has path length 0 and cannot issue CAs")
    if limit is not None and (child_path_length is None or child_path_length >= limit):
        raise xb.CeremonyError(
            f"issuer {issuer.name} has path length {limit}; a CA below it needs a path length "
            f"of at most {limit - 1}")
