"""Name policies: which names a certificate may carry, per authority, provisioner and ACME
account (compare step-ca's policy engine; REFERENCE.md "Name policy").

This module is the package's one face: the rest of the appliance writes
``from appliance import policy`` and uses ``policy.Names``, ``policy.check``, ... . Inside,
each name is defined once and the modules import downwards only: ``syntax`` (how a name is
parsed) <- ``model`` (the policy file and its compiled rules) and ``names`` (what a request
carries) <- ``engine`` (the verdict).

Evaluation (``check(names, [(level label, Policy | None), ...])``):

- Every level must pass; levels are judged in the order given and the first refusal is
  raised as ``PolicyError`` (code ``policy_refused``) naming the name, its type, the level
  and the rule. A level whose policy is None or has no allow/deny rule at all judges
  nothing (not even whether names are well-formed; ``allow_wildcard_names`` alone is not
  a rule).
- Within a level with rules, for each name: it must parse (else "malformed <type>"); deny
  rules are tried first and always win; then, if the level has any allow rule of any
  type, the name's type must have allow rules ("no allow rule for <type>") and one must
  match ("not in allow list"). A level with only deny rules admits everything not denied.
- DNS: rules and names are IDNA-normalised (A-labels, IDNA 2003 via ``encodings.idna``
  since the ``idna`` package is not installed, so ``ß`` maps to ``ss``) and lowercased;
  malformed names (empty labels, trailing dot, > 253 chars, labels > 63, non-LDH
  characters, all-numeric last label, an asterisk other than a leading ``*.``) are
  refused. Rule ``example.com`` matches itself; ``*.example.com`` exactly one more label;
  ``**.example.com`` one or more (never ``example.com`` itself).
- Wildcard request names (``*.example.com``): refused by every level with rules unless
  that level sets ``allow_wildcard_names: true`` (stricter than step-ca, where a deny-only
  level lets them through). The name stands for the set of names it covers: a deny rule
  refuses it if it matches ANY covered name (deny ``db.example.com``, ``*.example.com``
  or ``**.example.com`` all refuse ``*.example.com``); an allow rule admits it only if it
  matches EVERY covered name (``*.example.com``, ``**.example.com``, ``**.com`` do;
  ``www.example.com`` and ``example.com`` do not).
- IP: rules are addresses or CIDR networks; an IPv4 address and its IPv4-mapped IPv6
  form (``::ffff:a.b.c.d``) are the same name, matched by rules written in either form.
- Email: ``user@example.com`` exact (local part case-sensitive, domain normalised);
  ``example.com`` any mailbox at that domain; ``.example.com``/``**.example.com`` any
  mailbox at any subdomain; ``*.example.com`` one label below.
- URI: the host (userinfo and port removed) is matched like a DNS name (no wildcard
  requests). A URI without a host name (``urn:…``, ``spiffe:///x``) or whose host is an
  IP literal cannot be judged by host rules: refused by a level with any ``uri`` rule
  (allow or deny, RFC 5280 §4.2.1.10 does the same for name constraints); a level with no
  ``uri`` rules treats it like any other type (refused if the level has allow rules,
  else admitted).
- SANs of other kinds (otherName, directoryName, registeredID; and a second subject CN)
  are refused by every level with rules. ``Names.from_csr``/``from_certificate`` also
  count a subject emailAddress attribute as an email name.
- CN: refused if a ``cn`` deny rule matches it (case-insensitive), whatever it parses
  as. It is then parsed, in order, as an IP address, a URI with a host name
  (``scheme://host…``), an email address (if it has ``@``), or a DNS name (possibly
  ``*.``); anything else (a hostless URI, "Build Agent") is only a CN. If it
  parses, that type's deny rules and the wildcard switch apply too. It is admitted if
  the level has no allow rules, or a ``cn`` allow rule matches it, or it parses as a type
  and an allow rule of that type matches it; otherwise refused ("not in allow list", or
  "no allow rule for cn [or <type>]" when neither list exists). An empty CN is not judged.
"""

# ``X as X`` marks each name as exported (mypy --strict), so the face is these lines alone.
from appliance.policy.engine import PolicyError as PolicyError
from appliance.policy.engine import check as check
from appliance.policy.model import NameRules as NameRules
from appliance.policy.model import Policy as Policy
from appliance.policy.model import X509Policy as X509Policy
from appliance.policy.model import parse_policy as parse_policy
from appliance.policy.model import wildcard_notice as wildcard_notice
from appliance.policy.names import Names as Names
from appliance.policy.syntax import MalformedName as MalformedName
from appliance.policy.syntax import check_common_name as check_common_name
from appliance.policy.syntax import check_san as check_san
from appliance.policy.syntax import parse_dns_name as parse_dns_name
from appliance.policy.syntax import quote as quote
