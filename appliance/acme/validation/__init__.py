"""ACME challenge validation: http-01, dns-01 (RFC 8555 §8.3, §8.4) and tls-alpn-01 (RFC 8737).

Callers use ``from appliance.acme import validation`` and the names below:
``validate`` runs one challenge, ``key_authorization`` and ``dns01_txt_value`` compute
what the client must show, ``ValidationSettings`` says where and how long to look,
and ``ValidationError`` is every failure.

The validators talk to whatever the applicant points a name at, so they treat every
byte from the network as hostile:

* Every network operation is bounded by one deadline (``ValidationSettings.timeout``)
  for the whole attempt, including redirects and name resolution (:mod:`.deadline`),
  so a slow or silent peer cannot hold a worker longer than that.
* Every failure becomes a :class:`ValidationError` carrying the RFC 8555 problem type
  suffix, so the ACME layer can put it in the challenge's ``error`` without guessing.
* HTTP goes through :mod:`http.client` on a socket we connect ourselves
  (:mod:`.connect`): no proxy from the environment and no certificate verification
  on https redirects (RFC 8555 §8.3: the server SHOULD NOT validate the certificate).
* Names are resolved once (:mod:`.resolve`, through the configured resolvers when
  given) and we connect to the resolved address while keeping the name for the
  ``Host`` header and SNI.

One module per idea: :mod:`.attempt` (one attempt, end to end), :mod:`.names`
(identifier syntax), :mod:`.http01`, :mod:`.dns01`, :mod:`.tls_alpn01`, :mod:`.caa`
(RFC 8659), and the network helpers above. Identifier types are ``dns`` and ``ip``
(RFC 8738).
"""

from appliance.acme.validation.attempt import key_authorization as key_authorization
from appliance.acme.validation.attempt import validate as validate
from appliance.acme.validation.dns01 import dns01_txt_value as dns01_txt_value
from appliance.acme.validation.errors import ValidationError as ValidationError
from appliance.acme.validation.settings import ValidationSettings as ValidationSettings
from appliance.acme.validation.tls_alpn01 import ACME_IDENTIFIER_OID as ACME_IDENTIFIER_OID
