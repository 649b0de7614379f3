"""pkilint as a gate: nothing is signed by a CA key until its to-be-issued form lints clean."""

from appliance.lint.pkilint_gate import (
    MAX_DER_BYTES,
    CertKind,
    CrlKind,
    CrlProfile,
    Finding,
    LintError,
    blocking,
    lint_certificate,
    lint_crl,
    lint_ocsp_response,
    require_clean,
)

__all__ = [
    "MAX_DER_BYTES",
    "CertKind",
    "CrlKind",
    "CrlProfile",
    "Finding",
    "LintError",
    "blocking",
    "lint_certificate",
    "lint_crl",
    "lint_ocsp_response",
    "require_clean",
]
