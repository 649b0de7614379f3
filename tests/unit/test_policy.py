"""Name policy engine: the allow/deny matrix per name type, wildcards, IDNA, CN parsing,
levels, error messages, and the strictness of the policy file."""

from __future__ import annotations

import datetime
import ipaddress
import itertools
import time
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydantic import ValidationError

from appliance import policy
from appliance.errors import ApplianceError, ConfigError
from appliance.policy import Names, Policy, PolicyError, check, parse_policy

OK = "ok"


def pol(**x509: Any) -> Policy:
    return Policy.model_validate({"x509": x509})


def allow(wildcards: bool = False, **rules: list[str]) -> Policy:
    return pol(allow=rules, allow_wildcard_names=wildcards)


def deny(wildcards: bool = False, **rules: list[str]) -> Policy:
    return pol(deny=rules, allow_wildcard_names=wildcards)


def verdict(p: Policy | None, names: Names) -> str:
    """OK, or the ``rule`` of the refusal."""
    try:
        check(names, [("test", p)])
    except PolicyError as exc:
        assert exc.level == "test"
        return exc.rule
    return OK


def dns(*n: str) -> Names:
    return Names(dns=list(n))


def ip(*n: str) -> Names:
    return Names(ip=[ipaddress.ip_address(a) for a in n])


def email(*n: str) -> Names:
    return Names(email=list(n))


def uri(*n: str) -> Names:
    return Names(uri=list(n))


def cn(n: str) -> Names:
    return Names(cn=n)


NIL = "not in allow list"
WILD_OFF = "allow_wildcard_names is false"
NO_HOST = "uri without a host name"

# (policy, names, expected rule or OK)
MATRIX: list[tuple[str, Policy | None, Names, str]] = [
    # --- no rules ------------------------------------------------------------------------
    ("none-policy", None, dns("anything.example"), OK),
    ("empty-policy", Policy(), Names(dns=["a.example"], ip=[ipaddress.ip_address("1.2.3.4")],
                                     email=["x@y.example"], uri=["urn:x"], cn="Whatever"), OK),
    ("empty-policy-malformed-not-judged", Policy(), dns("bad..name"), OK),
    ("empty-policy-wildcard", Policy(), dns("*.example.com"), OK),
    ("flag-only-is-no-rule", pol(allow_wildcard_names=True), ip("1.1.1.1"), OK),
    ("empty-policy-other-san", Policy(), Names(other=[("otherName", "1.2.3")]), OK),
    # --- dns exact -----------------------------------------------------------------------
    ("dns-exact-hit", allow(dns=["example.com"]), dns("example.com"), OK),
    ("dns-exact-case", allow(dns=["Example.COM"]), dns("EXAMPLE.com"), OK),
    ("dns-exact-sub", allow(dns=["example.com"]), dns("www.example.com"), NIL),
    ("dns-exact-other", allow(dns=["example.com"]), dns("example.org"), NIL),
    ("dns-exact-suffix-trap", allow(dns=["example.com"]), dns("badexample.com"), NIL),
    # --- dns one label -------------------------------------------------------------------
    ("dns-one-hit", allow(dns=["*.example.com"]), dns("www.example.com"), OK),
    ("dns-one-apex", allow(dns=["*.example.com"]), dns("example.com"), NIL),
    ("dns-one-deep", allow(dns=["*.example.com"]), dns("a.b.example.com"), NIL),
    ("dns-one-suffix-trap", allow(dns=["*.example.com"]), dns("a.badexample.com"), NIL),
    # --- dns any depth -------------------------------------------------------------------
    ("dns-any-one", allow(dns=["**.example.com"]), dns("a.example.com"), OK),
    ("dns-any-deep", allow(dns=["**.example.com"]), dns("a.b.c.example.com"), OK),
    ("dns-any-apex", allow(dns=["**.example.com"]), dns("example.com"), NIL),
    ("dns-any-suffix-trap", allow(dns=["**.example.com"]), dns("notexample.com"), NIL),
    ("dns-apex-and-any", allow(dns=["example.com", "**.example.com"]),
     dns("example.com", "x.y.example.com"), OK),
    ("dns-all-must-pass", allow(dns=["*.example.com"]), dns("a.example.com", "b.example.org"),
     NIL),
    # --- dns deny ------------------------------------------------------------------------
    ("dns-deny-exact", deny(dns=["db.example.com"]), dns("db.example.com"), "db.example.com"),
    ("dns-deny-case", deny(dns=["db.example.com"]), dns("DB.Example.Com"), "db.example.com"),
    ("dns-deny-only-others-ok", deny(dns=["db.example.com"]), dns("www.example.com"), OK),
    ("dns-deny-one", deny(dns=["*.example.com"]), dns("a.example.com"), "*.example.com"),
    ("dns-deny-one-deep-ok", deny(dns=["*.example.com"]), dns("a.b.example.com"), OK),
    ("dns-deny-one-apex-ok", deny(dns=["*.example.com"]), dns("example.com"), OK),
    ("dns-deny-any", deny(dns=["**.example.com"]), dns("a.b.example.com"), "**.example.com"),
    ("dns-deny-any-apex-ok", deny(dns=["**.example.com"]), dns("example.com"), OK),
    ("dns-deny-wins", pol(allow={"dns": ["**.example.com"]}, deny={"dns": ["db.example.com"]}),
     dns("db.example.com"), "db.example.com"),
    ("dns-deny-wins-same-rule", pol(allow={"dns": ["db.example.com"]},
                                    deny={"dns": ["db.example.com"]}),
     dns("db.example.com"), "db.example.com"),
    ("dns-allow-beside-deny", pol(allow={"dns": ["**.example.com"]},
                                  deny={"dns": ["db.example.com"]}), dns("www.example.com"), OK),
    # --- IDNA ----------------------------------------------------------------------------
    ("idna-rule-u-name-a", allow(dns=["bücher.example.com"]), dns("xn--bcher-kva.example.com"),
     OK),
    ("idna-rule-a-name-u", allow(dns=["xn--bcher-kva.example.com"]), dns("bücher.example.com"),
     OK),
    ("idna-upper-unicode", allow(dns=["bücher.example.com"]), dns("BÜCHER.example.com"), OK),
    ("idna-not-ascii-folded", allow(dns=["bücher.example.com"]), dns("bucher.example.com"), NIL),
    ("idna-deny-not-evaded", deny(dns=["bücher.example.com"]), dns("xn--bcher-kva.EXAMPLE.com"),
     "bücher.example.com"),
    ("idna-ideographic-dots", deny(dns=["bücher.example.com"]), dns("bücher。example。com"),
     "bücher.example.com"),
    ("idna-fullwidth", deny(dns=["abc.example.com"]), dns("\uff21\uff22\uff23.example.com"),
     "abc.example.com"),
    ("idna-wildcard-rule", allow(dns=["*.bücher.example"]), dns("www.xn--bcher-kva.example"), OK),
    # --- wildcard request names ----------------------------------------------------------
    ("wild-flag-off", allow(dns=["*.example.com"]), dns("*.example.com"), WILD_OFF),
    ("wild-flag-off-deny-only", deny(dns=["x.example.org"]), dns("*.example.com"), WILD_OFF),
    ("wild-flag-off-other-type-rules", deny(ip=["10.0.0.0/8"]), dns("*.example.com"), WILD_OFF),
    ("wild-one-rule", allow(True, dns=["*.example.com"]), dns("*.example.com"), OK),
    ("wild-any-rule", allow(True, dns=["**.example.com"]), dns("*.example.com"), OK),
    ("wild-any-rule-deeper", allow(True, dns=["**.example.com"]), dns("*.a.example.com"), OK),
    ("wild-any-parent", allow(True, dns=["**.com"]), dns("*.example.com"), OK),
    ("wild-one-rule-deeper", allow(True, dns=["*.example.com"]), dns("*.a.example.com"), NIL),
    ("wild-exact-rule-apex", allow(True, dns=["example.com"]), dns("*.example.com"), NIL),
    ("wild-exact-rule-member", allow(True, dns=["www.example.com"]), dns("*.example.com"), NIL),
    ("wild-one-rule-parent", allow(True, dns=["*.com"]), dns("*.example.com"), NIL),
    ("wild-literal-exact-rule", allow(True, dns=["*.example.com"]), dns("*.EXAMPLE.com"), OK),
    ("wild-deny-member", pol(allow={"dns": ["*.example.com"]}, deny={"dns": ["db.example.com"]},
                             allow_wildcard_names=True), dns("*.example.com"), "db.example.com"),
    ("wild-deny-one", deny(True, dns=["*.example.com"]), dns("*.example.com"), "*.example.com"),
    ("wild-deny-any", deny(True, dns=["**.example.com"]), dns("*.example.com"),
     "**.example.com"),
    ("wild-deny-any-parent", deny(True, dns=["**.com"]), dns("*.example.com"), "**.com"),
    ("wild-deny-apex-ok", deny(True, dns=["example.com"]), dns("*.example.com"), OK),
    ("wild-deny-deeper-ok", deny(True, dns=["a.b.example.com"]), dns("*.example.com"), OK),
    ("wild-deny-sibling-ok", deny(True, dns=["*.b.example.com"]), dns("*.example.com"), OK),
    ("wild-deny-only-flag-on", deny(True, dns=["db.example.org"]), dns("*.example.com"), OK),
    # --- malformed dns (deny-only, so malformed is the only possible reason) --------------
    *[(f"dns-malformed-{i}", deny(True, dns=["x.invalid"]), dns(bad), "malformed dns")
      for i, bad in enumerate([
          "", ".", "a..example.com", ".example.com", "example.com.", "-a.example.com",
          "a-.example.com", "a_b.example.com", "a b.example.com", "exa\nmple.com",
          "a" * 64 + ".example.com", ".".join(["a" * 60] * 5), "10.0.0.1", "host.123",
          "a*.example.com", "*.*.example.com", "**.example.com", "*", "*.", "www.*.example.com",
          "xn--zzzzzzzzz-.example.com", "exa%6dple.com", "ex\u00admple\u200b.com\x00",
          "a" * 5000,
      ])],
    ("dns-max-label-ok", deny(dns=["x.invalid"]), dns("a" * 63 + ".example.com"), OK),
    ("dns-single-label-ok", allow(dns=["localhost"]), dns("LOCALHOST"), OK),
    # --- ip ------------------------------------------------------------------------------
    ("ip4-allow-hit", allow(ip=["10.0.0.0/8"]), ip("10.1.2.3"), OK),
    ("ip4-allow-miss", allow(ip=["10.0.0.0/8"]), ip("11.0.0.1"), NIL),
    ("ip4-single", allow(ip=["192.0.2.7"]), ip("192.0.2.7"), OK),
    ("ip4-single-miss", allow(ip=["192.0.2.7"]), ip("192.0.2.8"), NIL),
    ("ip4-rule-v6-name", allow(ip=["10.0.0.0/8"]), ip("2001:db8::1"), NIL),
    ("ip4-mapped-allowed", allow(ip=["10.0.0.0/8"]), ip("::ffff:10.1.2.3"), OK),
    ("ip6-allow-hit", allow(ip=["2001:db8::/32"]), ip("2001:db8:1::5"), OK),
    ("ip6-allow-miss", allow(ip=["2001:db8::/32"]), ip("2001:db9::1"), NIL),
    ("ip6-rule-v4-name", allow(ip=["2001:db8::/32"]), ip("10.0.0.1"), NIL),
    ("ip6-single", allow(ip=["2001:db8::1"]), ip("2001:DB8:0::1"), OK),
    ("ip-mapped-rule-v4-name", allow(ip=["::ffff:10.0.0.0/104"]), ip("10.9.9.9"), OK),
    ("ip4-deny", deny(ip=["10.0.0.0/8"]), ip("10.0.0.1"), "10.0.0.0/8"),
    ("ip4-deny-only-others", deny(ip=["10.0.0.0/8"]), ip("192.0.2.1", "2001:db8::1"), OK),
    ("ip4-deny-mapped-not-evaded", deny(ip=["10.0.0.0/8"]), ip("::ffff:10.0.0.1"),
     "10.0.0.0/8"),
    ("ip-deny-wins", pol(allow={"ip": ["0.0.0.0/0"]}, deny={"ip": ["10.0.0.0/8"]}),
     ip("10.2.3.4"), "10.0.0.0/8"),
    ("ip6-deny", deny(ip=["fd00::/8"]), ip("fd12::1"), "fd00::/8"),
    ("ip-all-must-pass", allow(ip=["10.0.0.0/8"]), ip("10.0.0.1", "8.8.8.8"), NIL),
    # --- email ---------------------------------------------------------------------------
    ("email-domain-hit", allow(email=["example.com"]), email("alice@example.com"), OK),
    ("email-domain-case", allow(email=["example.com"]), email("alice@EXAMPLE.Com"), OK),
    ("email-domain-sub", allow(email=["example.com"]), email("alice@sub.example.com"), NIL),
    ("email-domain-other", allow(email=["example.com"]), email("alice@example.org"), NIL),
    ("email-dot-sub", allow(email=[".example.com"]), email("a@sub.example.com"), OK),
    ("email-dot-deep", allow(email=[".example.com"]), email("a@x.y.example.com"), OK),
    ("email-dot-apex", allow(email=[".example.com"]), email("a@example.com"), NIL),
    ("email-any-deep", allow(email=["**.example.com"]), email("a@x.y.example.com"), OK),
    ("email-one-sub", allow(email=["*.example.com"]), email("a@sub.example.com"), OK),
    ("email-one-deep", allow(email=["*.example.com"]), email("a@x.y.example.com"), NIL),
    ("email-exact", allow(email=["alice@example.com"]), email("alice@example.com"), OK),
    ("email-exact-domain-case", allow(email=["alice@example.com"]), email("alice@EXAMPLE.COM"),
     OK),
    ("email-exact-local-case", allow(email=["alice@example.com"]), email("Alice@example.com"),
     NIL),
    ("email-exact-other-user", allow(email=["alice@example.com"]), email("bob@example.com"),
     NIL),
    ("email-deny-mailbox", pol(allow={"email": ["example.com"]},
                               deny={"email": ["ceo@example.com"]}),
     email("ceo@example.com"), "ceo@example.com"),
    ("email-deny-mailbox-others", pol(allow={"email": ["example.com"]},
                                      deny={"email": ["ceo@example.com"]}),
     email("bob@example.com"), OK),
    ("email-deny-domain", deny(email=["evil.com"]), email("x@EVIL.com"), "evil.com"),
    ("email-idna", allow(email=["bücher.example"]), email("a@xn--bcher-kva.example"), OK),
    ("email-idna-deny", deny(email=["x@bücher.example"]), email("x@xn--bcher-kva.example"),
     "x@bücher.example"),
    ("email-quoted-local", allow(email=["example.com"]), email('"john doe"@example.com'), OK),
    ("email-plus", allow(email=["example.com"]), email("a+tag@example.com"), OK),
    *[(f"email-malformed-{i}", deny(email=["x.invalid"]), email(bad), "malformed email")
      for i, bad in enumerate([
          "noatsign", "@example.com", "a@", "a..b@example.com", ".a@example.com", "a.@example.com",
          "a@exa mple.com", "a b@example.com", "a" * 65 + "@example.com", "a@example..com",
          "a@*.example.com", '"unterminated@example.com', "a@10.0.0.1",
      ])],
    # --- uri -----------------------------------------------------------------------------
    ("uri-hit", allow(uri=["spiffe.example.com"]), uri("spiffe://spiffe.example.com/ns/x"), OK),
    ("uri-case-port", allow(uri=["spiffe.example.com"]),
     uri("https://SPIFFE.example.com:8443/x?y#z"), OK),
    ("uri-miss", allow(uri=["spiffe.example.com"]), uri("https://evil.com/"), NIL),
    ("uri-userinfo-trap", allow(uri=["spiffe.example.com"]),
     uri("https://spiffe.example.com@evil.com/"), NIL),
    ("uri-userinfo-host", allow(uri=["spiffe.example.com"]),
     uri("https://evil.com@spiffe.example.com/"), OK),
    ("uri-one", allow(uri=["*.example.com"]), uri("https://a.example.com/"), OK),
    ("uri-one-deep", allow(uri=["*.example.com"]), uri("https://a.b.example.com/"), NIL),
    ("uri-any-deep", allow(uri=["**.example.com"]), uri("https://a.b.example.com/"), OK),
    ("uri-deny", deny(uri=["evil.com"]), uri("https://EVIL.com/x"), "evil.com"),
    ("uri-deny-only-others", deny(uri=["evil.com"]), uri("https://good.com/x"), OK),
    ("uri-deny-wins", pol(allow={"uri": ["**.example.com"]}, deny={"uri": ["x.example.com"]}),
     uri("https://x.example.com"), "x.example.com"),
    ("uri-deny-idna", deny(uri=["bücher.example"]), uri("https://xn--bcher-kva.example/"),
     "bücher.example"),
    ("uri-deny-unicode-host", deny(uri=["xn--bcher-kva.example"]), uri("https://bücher.example/"),
     "xn--bcher-kva.example"),
    ("uri-hostless-allow-rules", allow(uri=["example.com"]), uri("urn:uuid:1234"), NO_HOST),
    ("uri-hostless-deny-rules", deny(uri=["example.com"]), uri("urn:uuid:1234"), NO_HOST),
    ("uri-empty-authority", deny(uri=["example.com"]), uri("spiffe:///ns/x"), NO_HOST),
    ("uri-ip-host", allow(uri=["example.com"]), uri("https://10.0.0.1/"), NO_HOST),
    ("uri-ip6-host", deny(uri=["example.com"]), uri("https://[::1]:8443/"), NO_HOST),
    ("uri-hostless-other-allow", allow(dns=["example.com"]), uri("urn:uuid:1"),
     "no allow rule for uri"),
    ("uri-hostless-other-deny-only", deny(dns=["example.com"]), uri("urn:uuid:1"), OK),
    *[(f"uri-malformed-{i}", deny(uri=["x.invalid"]), uri(bad), "malformed uri")
      for i, bad in enumerate([
          "", "//example.com/x", "no-scheme", "https://exa mple.com/", "https://example.com:99999/",
          "https://[::1/", "https://%65vil.com/", "https://evil.com./", "https://*.example.com/",
          "1http://example.com", "https://a..b/",
      ])],
    # --- mixed types ---------------------------------------------------------------------
    ("mixed-dns-only-ip", allow(dns=["example.com"]), ip("10.0.0.1"), "no allow rule for ip"),
    ("mixed-dns-only-email", allow(dns=["example.com"]), email("a@example.com"),
     "no allow rule for email"),
    ("mixed-dns-only-uri", allow(dns=["example.com"]), uri("https://example.com/"),
     "no allow rule for uri"),
    ("mixed-cn-only-dns", allow(cn=["Build Agent"]), dns("example.com"), "no allow rule for dns"),
    ("mixed-ip-only-dns", allow(ip=["10.0.0.0/8"]), dns("example.com"), "no allow rule for dns"),
    ("mixed-deny-dns-ip-ok", deny(dns=["example.com"]), ip("10.0.0.1"), OK),
    ("mixed-deny-other-type-allow", pol(allow={"ip": ["10.0.0.0/8"]},
                                        deny={"dns": ["db.example.com"]}),
     dns("www.example.com"), "no allow rule for dns"),
    ("mixed-all-types-ok",
     allow(dns=["**.example.com"], ip=["10.0.0.0/8"], email=["example.com"],
           uri=["spiffe.example.com"], cn=["Build Agent"]),
     Names(dns=["a.example.com"], ip=[ipaddress.ip_address("10.0.0.1")],
           email=["a@example.com"], uri=["spiffe://spiffe.example.com/x"], cn="Build Agent"), OK),
    # --- other SAN kinds -----------------------------------------------------------------
    ("other-san-deny-only", deny(dns=["x.invalid"]), Names(other=[("otherName", "1.2.3.4")]),
     "unsupported name type"),
    ("other-san-allow", allow(dns=["**.example.com"]),
     Names(dns=["a.example.com"], other=[("directoryName", "CN=x")]), "unsupported name type"),
    # --- common name ---------------------------------------------------------------------
    ("cn-allow", allow(cn=["Build Agent"]), cn("Build Agent"), OK),
    ("cn-allow-case", allow(cn=["Build Agent"]), cn("BUILD agent"), OK),
    ("cn-allow-miss", allow(cn=["Build Agent"]), cn("Other Agent"), NIL),
    ("cn-empty-not-judged", allow(cn=["Build Agent"]), cn(""), OK),
    ("cn-plain-no-cn-rules", allow(dns=["**.example.com"]), cn("Build Agent"),
     "no allow rule for cn"),
    ("cn-plain-deny-only", deny(dns=["db.example.com"]), cn("Build Agent"), OK),
    ("cn-as-dns-allowed", allow(dns=["*.example.com"]), cn("www.example.com"), OK),
    ("cn-as-dns-miss", allow(dns=["*.example.com"]), cn("www.example.org"), NIL),
    ("cn-as-dns-idna", allow(dns=["bücher.example"]), cn("xn--bcher-kva.example"), OK),
    ("cn-as-dns-no-rules", allow(ip=["10.0.0.0/8"]), cn("host.example.com"),
     "no allow rule for cn or dns"),
    ("cn-as-dns-cn-rule-miss", allow(dns=["*.example.com"], cn=["Build Agent"]),
     cn("x.example.org"), NIL),
    ("cn-as-dns-cn-rule-hit", allow(dns=["*.example.com"], cn=["x.example.org"]),
     cn("x.example.org"), OK),
    ("cn-as-dns-only-cn-rules", allow(cn=["Build Agent"]), cn("x.example.com"), NIL),
    ("cn-as-ip", allow(ip=["10.0.0.0/8"]), cn("10.1.2.3"), OK),
    ("cn-as-ip-miss", allow(ip=["10.0.0.0/8"]), cn("11.1.2.3"), NIL),
    ("cn-as-ip6", allow(ip=["2001:db8::/32"]), cn("2001:db8::7"), OK),
    ("cn-as-ip-denied", deny(ip=["10.0.0.0/8"]), cn("10.0.0.1"), "10.0.0.0/8"),
    ("cn-as-email", allow(email=["example.com"]), cn("alice@example.com"), OK),
    ("cn-as-email-miss", allow(email=["example.com"]), cn("alice@example.org"), NIL),
    ("cn-as-email-denied", deny(email=["ceo@example.com"]), cn("ceo@example.com"),
     "ceo@example.com"),
    ("cn-as-uri", allow(uri=["spiffe.example.com"]), cn("spiffe://spiffe.example.com/x"), OK),
    ("cn-as-uri-denied", deny(uri=["evil.com"]), cn("https://evil.com/"), "evil.com"),
    ("cn-as-uri-userinfo", deny(uri=["evil.com"]), cn("https://good.example@evil.com/"),
     "evil.com"),
    ("cn-hostless-uri-is-plain", deny(uri=["evil.com"]), cn("urn:x:y"), OK),
    ("cn-denied-by-cn-rule", pol(allow={"dns": ["**.example.com"]},
                                 deny={"cn": ["db.example.com"]}),
     cn("db.example.com"), "db.example.com"),
    ("cn-denied-by-cn-rule-case", pol(allow={"dns": ["**.example.com"]},
                                      deny={"cn": ["db.example.com"]}),
     cn("DB.EXAMPLE.COM"), "db.example.com"),
    ("cn-deny-rule-not-applied-to-san", pol(allow={"dns": ["**.example.com"]},
                                            deny={"cn": ["db.example.com"]}),
     dns("db.example.com"), OK),
    ("cn-denied-as-dns-despite-cn-allow", pol(allow={"cn": ["db.example.com"]},
                                              deny={"dns": ["db.example.com"]}),
     cn("db.example.com"), "db.example.com"),
    ("cn-denied-as-dns-deny-only", deny(dns=["db.example.com"]), cn("DB.example.com"),
     "db.example.com"),
    ("cn-denied-cn-allowed-same", pol(allow={"cn": ["Build Agent"]},
                                      deny={"cn": ["build agent"]}), cn("Build Agent"),
     "build agent"),
    ("cn-wildcard-flag-off", allow(dns=["*.example.com"]), cn("*.example.com"), WILD_OFF),
    ("cn-wildcard-flag-on", allow(True, dns=["*.example.com"]), cn("*.example.com"), OK),
    ("cn-wildcard-cn-rule-needs-flag", allow(cn=["*.example.com"]), cn("*.example.com"),
     WILD_OFF),
]


@pytest.mark.parametrize(("policy_", "names", "expected"),
                         [pytest.param(p, n, e, id=i) for i, p, n, e in MATRIX])
def test_policy_matrix(policy_: Policy | None, names: Names, expected: str) -> None:
    assert verdict(policy_, names) == expected


def test_matrix_ids_are_unique() -> None:
    ids = [i for i, *_ in MATRIX]
    assert len(ids) == len(set(ids))


# --- wildcard request semantics against brute force -------------------------------------

LABELS = ["a", "b", "example", "com"]


def _hosts(max_labels: int) -> list[str]:
    return [".".join(p) for n in range(1, max_labels + 1)
            for p in itertools.product(LABELS, repeat=n)]


def test_wildcard_request_is_judged_as_the_set_of_names_it_covers() -> None:
    """A deny rule refuses ``*.H`` iff it matches some ``x.H``; an allow rule admits it iff
    it matches every ``x.H`` (checked with the rule's own labels and a fresh one)."""
    rules = [prefix + h for h in _hosts(2) for prefix in ("", "*.", "**.")]
    for rule, base in itertools.product(rules, _hosts(3)):
        members = [f"{x}.{base}" for x in [*LABELS, "fresh"]]
        single = {m: verdict(deny(dns=[rule]), dns(m)) != OK for m in members}
        denied = verdict(deny(True, dns=[rule]), dns("*." + base)) != OK
        assert denied == any(single.values()), (rule, base)
        admitted = verdict(allow(True, dns=[rule]), dns("*." + base)) == OK
        allowed_each = [verdict(allow(dns=[rule]), dns(m)) == OK for m in members]
        assert admitted == all(allowed_each), (rule, base)


# --- levels and errors ------------------------------------------------------------------


def test_levels_provisioner_deny_beats_authority_allow_and_names_both() -> None:
    authority = allow(dns=["**.example.com"])
    provisioner = deny(dns=["db.example.com"])
    names = dns("www.example.com", "db.example.com")
    with pytest.raises(PolicyError) as caught:
        check(names, [("authority", authority), ("provisioner admin", provisioner)])
    err = caught.value
    assert (err.name, err.name_type, err.level, err.rule) == (
        "db.example.com", "dns", "provisioner admin", "db.example.com")
    assert str(err) == ('dns name "db.example.com" refused by provisioner admin policy: '
                        'denied by "db.example.com"')
    assert err.code == "policy_refused" and isinstance(err, ApplianceError)


def test_levels_every_level_must_pass() -> None:
    authority = allow(dns=["example.com"])
    with pytest.raises(PolicyError) as caught:
        check(dns("www.example.com"), [("authority", authority), ("provisioner p", None)])
    assert caught.value.level == "authority" and caught.value.rule == NIL
    check(dns("example.com"), [("authority", authority), ("provisioner p", Policy())])


def test_levels_acme_account_level_refuses() -> None:
    levels = [("authority", None), ("provisioner acme", allow(dns=["**.example.com"])),
              ("ACME account kid-1", allow(dns=["*.team.example.com"]))]
    check(dns("x.team.example.com"), levels)
    with pytest.raises(PolicyError) as caught:
        check(dns("x.other.example.com"), levels)
    assert caught.value.level == "ACME account kid-1"


def test_levels_first_refusing_level_is_reported() -> None:
    levels = [("authority", deny(dns=["db.example.com"])),
              ("provisioner p", deny(dns=["**.example.com"]))]
    with pytest.raises(PolicyError) as caught:
        check(dns("db.example.com"), levels)
    assert caught.value.level == "authority"


def test_levels_wildcard_switch_is_per_level() -> None:
    levels = [("authority", allow(True, dns=["**.example.com"])),
              ("provisioner p", deny(dns=["x.invalid"]))]
    with pytest.raises(PolicyError) as caught:
        check(dns("*.example.com"), levels)
    assert (caught.value.level, caught.value.rule) == ("provisioner p", WILD_OFF)
    check(dns("*.example.com"), [levels[0], ("provisioner p", Policy())])
    check(dns("*.example.com"), [levels[0], ("provisioner p", deny(True, dns=["x.invalid"]))])


def test_levels_accept_any_iterable() -> None:
    check(dns("a.example.com"), iter([("authority", allow(dns=["*.example.com"]))]))
    check(dns("a.example.com"), [])


@pytest.mark.parametrize(("p", "names", "message"), [
    (allow(dns=["example.com"]), ip("10.0.0.1"),
     'ip address "10.0.0.1" refused by test policy: no allow rule for ip'),
    (allow(dns=["example.com"]), dns("www.example.com"),
     'dns name "www.example.com" refused by test policy: not in allow list'),
    (deny(email=["ceo@example.com"]), email("ceo@example.com"),
     'email address "ceo@example.com" refused by test policy: denied by "ceo@example.com"'),
    (deny(uri=["evil.com"]), uri("https://evil.com/"),
     'uri "https://evil.com/" refused by test policy: denied by "evil.com"'),
    (pol(deny={"cn": ["Bad"]}), cn("bad"),
     'common name "bad" refused by test policy: denied by "Bad"'),
    (allow(dns=["example.com"]), dns("*.example.com"),
     'dns name "*.example.com" refused by test policy: wildcard names are not allowed '
     '(allow_wildcard_names is false)'),
    (deny(dns=["x.invalid"]), dns("a..example.com"),
     'dns name "a..example.com" refused by test policy: malformed dns name (empty label)'),
    (deny(uri=["x.invalid"]), uri("urn:x"),
     'uri "urn:x" refused by test policy: uri rules need a host name'),
    (deny(dns=["x.invalid"]), Names(other=[("otherName", "1.3.6.1.4.1.311.20.2.3")]),
     'otherName SAN "1.3.6.1.4.1.311.20.2.3" refused by test policy: unsupported name type: '
     'name policies cannot judge otherName names'),
])
def test_error_messages_name_the_name_and_the_rule(p: Policy, names: Names, message: str) -> None:
    with pytest.raises(PolicyError) as caught:
        check(names, [("test", p)])
    assert str(caught.value) == message


def test_error_message_escapes_control_characters_and_bounds_length() -> None:
    with pytest.raises(PolicyError) as caught:
        check(dns("evil\n.example.com"), [("test", deny(dns=["x.invalid"]))])
    assert "\n" not in str(caught.value) and "evil\\n" in str(caught.value)
    assert caught.value.name == "evil\n.example.com"
    with pytest.raises(PolicyError) as caught:
        check(dns("a" * 10_000), [("test", deny(dns=["x.invalid"]))])
    assert len(str(caught.value)) < 500


def test_policy_error_survives_pickling() -> None:
    import pickle

    with pytest.raises(PolicyError) as caught:
        check(dns("db.example.com"), [("authority", deny(dns=["db.example.com"]))])
    again = pickle.loads(pickle.dumps(caught.value))
    assert str(again) == str(caught.value)
    assert (again.name, again.name_type, again.level, again.rule) == (
        "db.example.com", "dns", "authority", "db.example.com")


def test_cn_error_has_cn_type_even_when_parsed_as_dns() -> None:
    with pytest.raises(PolicyError) as caught:
        check(cn("db.example.com"), [("test", deny(dns=["db.example.com"]))])
    assert caught.value.name_type == "cn" and caught.value.name == "db.example.com"


def test_ip_names_given_as_strings_are_parsed() -> None:
    bad = Names(ip=["10.0.0.1"])  # type: ignore[list-item]
    assert verdict(deny(ip=["10.0.0.0/8"]), bad) == "10.0.0.0/8"
    worse = Names(ip=["not-an-ip"])  # type: ignore[list-item]
    assert verdict(deny(ip=["10.0.0.0/8"]), worse) == "malformed ip"


def test_large_policy_is_fast() -> None:
    rules = [f"h{i}.example.com" for i in range(1000)]
    p = pol(allow={"dns": rules, "ip": [f"10.{i // 256}.{i % 256}.0/24" for i in range(1000)]},
            deny={"dns": [f"*.d{i}.example.com" for i in range(1000)]})
    names = Names(dns=[f"h{i}.example.com" for i in range(0, 1000, 10)],
                  ip=[ipaddress.ip_address(f"10.3.{i}.1") for i in range(100)])
    start = time.perf_counter()
    for _ in range(3):
        check(names, [("authority", p), ("provisioner p", p)])
    assert time.perf_counter() - start < 5


# --- the policy file --------------------------------------------------------------------

FULL = """
x509:
  allow:
    dns: ["*.example.com", "**.corp.example.com", "bücher.example"]
    ip: ["10.0.0.0/8", "2001:db8::/32", "192.0.2.1"]
    email: ["example.com", ".example.org", "alice@example.net"]
    uri: ["spiffe.example.com"]
    cn: ["Build Agent"]
  deny:
    dns: ["db.example.com"]
  allow_wildcard_names: false
"""


def test_parse_full_policy_and_round_trip() -> None:
    p = parse_policy(FULL, "policy.yaml")
    assert p.x509.allow.dns == ("*.example.com", "**.corp.example.com", "bücher.example")
    assert p.x509.deny.dns == ("db.example.com",) and p.has_rules
    again = parse_policy(p.to_yaml(), "round trip")
    assert again == p
    assert again.model_dump() == p.model_dump()
    assert "bücher.example" in p.to_yaml()


@pytest.mark.parametrize("text", ["{}", "x509: {}", "x509: {allow: {}, deny: {}}",
                                  "x509: {allow_wildcard_names: true}"])
def test_parse_policies_without_rules(text: str) -> None:
    p = parse_policy(text, "p")
    assert not p.has_rules
    assert parse_policy(p.to_yaml(), "again") == p
    check(dns("bad..name"), [("authority", p)])


def test_policy_model_is_frozen_and_hashable() -> None:
    p = parse_policy(FULL, "p")
    with pytest.raises(ValidationError, match="frozen"):
        p.x509 = policy.X509Policy()
    assert hash(p) == hash(parse_policy(FULL, "p"))


BAD_POLICIES = {
    "unknown-top-key": ("x509: {}\nssh: {}", "ssh"),
    "unknown-x509-key": ("x509: {alow: {dns: [a.example]}}", "alow"),
    "unknown-type": ("x509: {allow: {dnss: [a.example]}}", "dnss"),
    "bad-cidr-prefix": ("x509: {allow: {ip: [10.0.0.0/33]}}", "x509.allow.ip"),
    "cidr-host-bits": ("x509: {allow: {ip: [10.0.0.1/8]}}", "host bits"),
    "not-an-ip": ("x509: {deny: {ip: [example.com]}}", "x509.deny.ip"),
    "dns-double-wildcard": ("x509: {allow: {dns: ['*.*.example.com']}}", "entry 0"),
    "dns-inner-wildcard": ("x509: {allow: {dns: ['a*.example.com']}}", "wildcard"),
    "dns-leading-dot": ("x509: {allow: {dns: ['.example.com']}}", "leading dot"),
    "dns-empty-label": ("x509: {allow: {dns: ['ok.example', 'example..com']}}", "entry 1"),
    "dns-space": ("x509: {allow: {dns: ['foo bar']}}", "x509.allow.dns"),
    "dns-bare-star": ("x509: {allow: {dns: ['*']}}", "x509.allow.dns"),
    "dns-bare-double-star": ("x509: {allow: {dns: ['**']}}", "x509.allow.dns"),
    "uri-leading-dot": ("x509: {allow: {uri: ['.example.com']}}", "x509.allow.uri"),
    "uri-with-scheme": ("x509: {allow: {uri: ['https://example.com']}}", "x509.allow.uri"),
    "email-wild-local": ("x509: {allow: {email: ['*@example.com']}}", "x509.allow.email"),
    "email-bad-mailbox": ("x509: {allow: {email: ['a..b@example.com']}}", "x509.allow.email"),
    "empty-entry": ("x509: {allow: {cn: ['']}}", "x509.allow.cn"),
    "cn-control": ('x509: {allow: {cn: ["a\\u0000b"]}}', "x509.allow.cn"),
    "too-long-entry": ("x509: {allow: {cn: ['" + "a" * 256 + "']}}", "x509.allow.cn"),
    "too-many-entries": ("x509: {allow: {dns: [" + ", ".join(f"h{i}.example" for i in range(1001))
                         + "]}}", "x509.allow.dns"),
    "non-string-entry": ("x509: {allow: {dns: [1]}}", "x509.allow.dns"),
    "list-not-mapping": ("x509: {allow: [a.example]}", "x509.allow"),
    "string-not-list": ("x509: {allow: {dns: a.example}}", "x509.allow.dns"),
    "bool-as-string": ("x509: {allow_wildcard_names: 'yes'}", "allow_wildcard_names"),
    "not-a-mapping": ("- a\n- b", "expected exactly one YAML mapping"),
    "two-documents": ("x509: {}\n---\nx509: {}", "expected exactly one YAML mapping"),
    "bad-yaml": ("x509: {allow: [", "not valid YAML"),
}


@pytest.mark.parametrize(("text", "mentions"), list(BAD_POLICIES.values()), ids=list(BAD_POLICIES))
def test_bad_policy_files_are_config_errors(text: str, mentions: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_policy(text, "policy.yaml")
    assert str(caught.value).startswith("policy.yaml: ")
    assert mentions in str(caught.value)


def test_bounds_are_inclusive() -> None:
    many = "x509: {allow: {dns: [" + ", ".join(f"h{i}.example" for i in range(1000)) + "]}}"
    assert len(parse_policy(many, "p").x509.allow.dns) == 1000
    assert parse_policy("x509: {allow: {cn: ['" + "a" * 255 + "']}}", "p").has_rules


# --- extracting names -------------------------------------------------------------------

_KEY = ec.generate_private_key(ec.SECP256R1())


def _subject(*cns: str, email_addr: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, c) for c in cns]
    if email_addr:
        attrs.append(x509.NameAttribute(NameOID.EMAIL_ADDRESS, email_addr))
    return x509.Name(attrs)


ALL_SANS: list[x509.GeneralName] = [
    x509.DNSName("www.example.com"),
    x509.IPAddress(ipaddress.ip_address("10.0.0.1")),
    x509.IPAddress(ipaddress.ip_address("2001:db8::1")),
    x509.RFC822Name("alice@example.com"),
    x509.UniformResourceIdentifier("spiffe://example.com/x"),
    x509.OtherName(x509.ObjectIdentifier("1.3.6.1.4.1.311.20.2.3"), b"\x0c\x01a"),
    x509.DirectoryName(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Org")])),
    x509.RegisteredID(x509.ObjectIdentifier("1.2.3.4")),
]


def test_names_from_csr() -> None:
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(_subject("Build Agent", email_addr="ops@example.com"))
           .add_extension(x509.SubjectAlternativeName(ALL_SANS), critical=False)
           .sign(_KEY, hashes.SHA256()))
    names = Names.from_csr(csr)
    assert names.dns == ["www.example.com"]
    assert names.ip == [ipaddress.ip_address("10.0.0.1"), ipaddress.ip_address("2001:db8::1")]
    assert names.email == ["alice@example.com", "ops@example.com"]
    assert names.uri == ["spiffe://example.com/x"]
    assert names.cn == "Build Agent"
    assert names.other == [("otherName", "1.3.6.1.4.1.311.20.2.3"), ("directoryName", "O=Org"),
                           ("registeredID", "1.2.3.4")]
    with pytest.raises(PolicyError) as caught:
        check(names, [("authority", None), ("provisioner p", deny(dns=["x.invalid"]))])
    assert caught.value.name_type == "otherName" and caught.value.level == "provisioner p"
    check(names, [("authority", None), ("provisioner p", Policy())])


def test_names_from_csr_without_san_or_cn() -> None:
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(
        _KEY, hashes.SHA256())
    assert Names.from_csr(csr) == Names()


def _cert(subject: x509.Name, sans: list[x509.GeneralName]) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
               .public_key(_KEY.public_key()).serial_number(1)
               .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1)))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(_KEY, hashes.SHA256())


def test_names_from_certificate() -> None:
    cert = _cert(_subject("db.example.com"), [x509.DNSName("www.example.com")])
    names = Names.from_certificate(cert)
    assert names == Names(dns=["www.example.com"], cn="db.example.com")
    p = pol(allow={"dns": ["**.example.com"]}, deny={"cn": ["db.example.com"]})
    with pytest.raises(PolicyError) as caught:
        check(names, [("authority", p)])
    assert (caught.value.name_type, caught.value.rule) == ("cn", "db.example.com")


def test_second_common_name_is_refused_under_rules() -> None:
    names = Names.from_certificate(_cert(_subject("a.example.com", "b.example.com"), []))
    assert names.cn == "a.example.com"
    assert names.other == [("additional commonName", "b.example.com")]
    assert verdict(allow(dns=["**.example.com"]), names) == "unsupported name type"
    assert verdict(None, names) == OK


def test_names_from_sans_classifies_strings() -> None:
    names = Names.from_sans(["www.example.com", "10.0.0.1", "::1", "a@example.com",
                             "spiffe://example.com/x", "urn:uuid:1", "*.example.com"], cn="x")
    assert names.dns == ["www.example.com", "*.example.com"]
    assert names.ip == [ipaddress.ip_address("10.0.0.1"), ipaddress.ip_address("::1")]
    assert names.email == ["a@example.com"]
    assert names.uri == ["spiffe://example.com/x", "urn:uuid:1"]
    assert names.cn == "x"


def test_public_api_is_exported() -> None:
    import appliance.policy as pkg

    for attr in ("Names", "Policy", "X509Policy", "NameRules", "PolicyError", "check",
                 "parse_policy"):
        assert getattr(pkg, attr) is getattr(policy, attr)
