"""One validation attempt: the identifier check, the challenge by type, then CAA.

This is where every failure becomes a :class:`ValidationError`: the challenge modules map
the errors whose context they know, and anything that slips through is still reported
as what it is (DNS, TLS, network), never as a server error.
"""

from __future__ import annotations

import http.client
import re
import socket
import ssl

import dns.exception

from appliance.acme.validation.caa import check_caa
from appliance.acme.validation.deadline import Deadline
from appliance.acme.validation.dns01 import validate_dns01
from appliance.acme.validation.errors import ValidationError
from appliance.acme.validation.http01 import validate_http01
from appliance.acme.validation.names import check_identifier
from appliance.acme.validation.settings import ValidationSettings
from appliance.acme.validation.tls_alpn01 import validate_tls_alpn01

_TOKEN = re.compile(r"^[A-Za-z0-9_-]+$")


def key_authorization(token: str, account_jwk_thumbprint: str) -> str:
    """RFC 8555 §8.1: ``token || '.' || base64url(JWK thumbprint)``."""
    return f"{token}.{account_jwk_thumbprint}"



def validate(challenge_type: str, identifier_type: str, identifier: str, token: str,
             key_authorization: str, settings: ValidationSettings, *,
             account_uri: str | None = None) -> str:
    """Run one challenge; return what was checked, or raise :class:`ValidationError`.

    The return value is a short human description (URL and address, TXT name, TLS
    endpoint, CAA) meant for the audit log, so a later reader can see *what* vouched for
    the identifier. With ``settings.caa_identities``, a DNS name whose challenge passed
    must also be authorized by its CAA records (RFC 8659; ``accounturi`` and
    ``validationmethods`` of RFC 8657 are honoured, hence ``account_uri``).
    """
    deadline = Deadline(settings.timeout)
    kind, name = check_identifier(challenge_type, identifier_type, identifier)
    if challenge_type in ("http-01", "tls-alpn-01") and not _TOKEN.match(token):
        # The token goes into a URL path (http-01); RFC 8555 §8.1 makes it base64url.
        raise ValidationError("malformed", f"token {token!r} is not base64url")
    try:
        if challenge_type == "http-01":
            checked = validate_http01(kind, name, token, key_authorization, settings,
                                      deadline)
        elif challenge_type == "dns-01":
            checked = validate_dns01(name, key_authorization, settings, deadline)
        else:
            checked = validate_tls_alpn01(kind, name, key_authorization, settings, deadline)
        if kind == "dns" and settings.caa_identities:
            checked += "; " + check_caa(name, challenge_type, account_uri, settings,
                                        deadline)
        return checked
    except ValidationError:
        raise
    except (dns.exception.DNSException, socket.gaierror) as exc:
        # Backstop: the helpers map errors where they know the context; anything that
        # slips through is still reported as what it is, never as a 500.
        raise ValidationError("dns", f"{challenge_type} for {name}: DNS error: {exc}") from exc
    except ssl.SSLError as exc:
        raise ValidationError("tls", f"{challenge_type} for {name}: TLS error: {exc}") from exc
    except (OSError, http.client.HTTPException) as exc:
        raise ValidationError(
            "connection", f"{challenge_type} for {name}: network error: {exc}"
        ) from exc

