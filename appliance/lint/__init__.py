"""pkilint as a gate: nothing is signed by a CA key until its to-be-issued form lints clean.

This module is the package's one face: callers write ``from appliance import lint`` and use
``lint.lint_certificate``, ``lint.require_clean``, ... ; ``pkilint_gate`` defines them, and
``shape_cache`` defines ``lint.lint_leaf`` (the same findings as ``lint_certificate(der,
"leaf")``, memoised per fixed part, for the issuance pipeline).
"""

# ``X as X`` marks each name as exported (mypy --strict), so the face is these lines alone.
from appliance.lint.pkilint_gate import MAX_DER_BYTES as MAX_DER_BYTES
from appliance.lint.pkilint_gate import CertKind as CertKind
from appliance.lint.pkilint_gate import CrlKind as CrlKind
from appliance.lint.pkilint_gate import CrlProfile as CrlProfile
from appliance.lint.pkilint_gate import Finding as Finding
from appliance.lint.pkilint_gate import LintError as LintError
from appliance.lint.pkilint_gate import blocking as blocking
from appliance.lint.pkilint_gate import lint_certificate as lint_certificate
from appliance.lint.pkilint_gate import lint_crl as lint_crl
from appliance.lint.pkilint_gate import lint_ocsp_response as lint_ocsp_response
from appliance.lint.pkilint_gate import require_clean as require_clean
from appliance.lint.pkilint_gate import warm as warm
from appliance.lint.shape_cache import lint_leaf as lint_leaf
