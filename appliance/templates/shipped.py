"""The certificate templates shipped with the appliance (``builtin/<name>.json.j2``).

Each is an ordinary template (same sandbox, same variables) that an
administrator can copy and adapt:

``tls-server``
    CN = the first DNS name (else the first IP address) of the request that
    fits in a CN; SANs = every DNS name and IP address; EKU serverAuth; KU
    digitalSignature, plus keyEncipherment for RSA keys; the CA/B Forum
    domain-validated policy OID (2.23.140.1.2.1) unless the authority's
    policies already include a CA/B TLS policy OID. Refuses a request
    without DNS names or IP addresses.
``tls-client``
    CN = the request's CN (else its first SAN value); SANs = its DNS, IP,
    email and URI names; EKU clientAuth; KU digitalSignature.
``mtls-service``
    URI SAN ``spiffe://<trust_domain>/<service>``, each from the token's
    claims or, failing that, the template data; plus the request's DNS
    names; CN = the service; EKU serverAuth + clientAuth; KU
    digitalSignature (+ keyEncipherment for RSA). Refuses without both.
``smime-email``
    SANs = the request's email addresses (refused without one); CN = the
    first; EKU emailProtection; KU digitalSignature + keyEncipherment for
    RSA keys, digitalSignature + keyAgreement for EC keys (keyEncipherment
    is not possible with an EC key).
``code-signing``
    Subject C, O, CN from the request (CN required); email SANs only (a
    DNS, IP or URI name is refused); EKU codeSigning; KU digitalSignature.
``iot-device``
    CN = the inventory record's ``metadata.device_id``, else the request's
    CN (refused without either); serialNumber = ``metadata.serial_number``,
    else the device id; EKU clientAuth; KU digitalSignature.
``ra-credential``
    A registration authority's mTLS credential: CN = the RA's name and SAN URI
    ``urn:appliance:ra:<name>``, both from ``token.ra_credential.name`` (set by the
    CA when it registers the RA, never taken from the CSR); EKU clientAuth; KU
    digitalSignature.

All of them: basicConstraints cA=FALSE, the authority's policies, CRL and
AIA URLs; validity left to the pipeline.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

__all__ = ["BUILTIN_SUFFIX", "builtin_templates"]

BUILTIN_SUFFIX = ".json.j2"


@cache
def _load() -> tuple[tuple[str, str], ...]:
    folder = resources.files("appliance.templates").joinpath("builtin")
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(BUILTIN_SUFFIX) and entry.is_file():
            found.append((entry.name.removesuffix(BUILTIN_SUFFIX), entry.read_text("utf-8")))
    return tuple(sorted(found))


def builtin_templates() -> dict[str, str]:
    """The shipped templates' sources by name (a fresh dict; the sources are immutable)."""
    return dict(_load())
