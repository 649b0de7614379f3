"""Evaluating requested names against the policy of every level (see ``appliance.policy``)."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial

from appliance.errors import ApplianceError
from appliance.policy.model import (
    CompiledPolicy,
    DomainRule,
    IPRule,
    MailboxRule,
    NameType,
    Policy,
    compile_policy,
)
from appliance.policy.names import Names
from appliance.policy.syntax import (
    DnsName,
    IPAddress,
    Mailbox,
    MalformedName,
    looks_like_uri,
    parse_dns_name,
    parse_mailbox,
    parse_uri_host,
    quote,
)

_LABELS = {
    "dns": "dns name",
    "ip": "ip address",
    "email": "email address",
    "uri": "uri",
    "cn": "common name",
}

NOT_IN_ALLOW_LIST = "not in allow list"
WILDCARDS_OFF = "allow_wildcard_names is false"
UNSUPPORTED = "unsupported name type"
URI_WITHOUT_HOST_NAME = "uri without a host name"


class PolicyError(ApplianceError):
    """A name policy refused a name.

    ``name`` is the name as requested, ``name_type`` one of dns, ip, email, uri, cn (or the
    SAN kind, e.g. otherName), ``level`` the label of the refusing level, ``rule`` the deny
    rule as written, or one of "no allow rule for <type>", "not in allow list",
    "allow_wildcard_names is false", "uri without a host name", "malformed <type>",
    "unsupported name type".
    """

    code = "policy_refused"
    status = 403
    acme_type = "rejectedIdentifier"

    def __init__(self, name: str, name_type: str, level: str, rule: str, reason: str) -> None:
        label = _LABELS.get(name_type, f"{name_type} SAN")
        super().__init__(f"{label} {quote(name)} refused by {level} policy: {reason}")
        self.name = name
        self.name_type = name_type
        self.level = level
        self.rule = rule
        self.reason = reason

    def __reduce__(self) -> tuple[type[PolicyError], tuple[str, str, str, str, str]]:
        return type(self), (self.name, self.name_type, self.level, self.rule, self.reason)


@dataclass(frozen=True)
class _Refusal:
    rule: str
    reason: str


def _denied_by(rule_text: str) -> _Refusal:
    return _Refusal(rule_text, f"denied by {quote(rule_text)}")


# --- per-type matching -----------------------------------------------------------------


def _within(host: str, base: str) -> bool:
    """``host`` is ``base`` or below it."""
    return host == base or host.endswith("." + base)


def _dns_deny_hits(rule: DomainRule, name: DnsName) -> bool:
    """A deny rule hits a wildcard request if it matches any name the wildcard covers."""
    if not name.wildcard:
        return rule.matches(name.host)
    if rule.kind == "exact":
        return DomainRule("", "one", name.host).matches(rule.base)
    if rule.kind == "one":
        return rule.base == name.host
    return _within(name.host, rule.base)


def _dns_allow_covers(rule: DomainRule, name: DnsName) -> bool:
    """An allow rule admits a wildcard request only if it matches every name it covers."""
    if not name.wildcard:
        return rule.matches(name.host)
    if rule.kind == "exact":
        return False
    if rule.kind == "one":
        return rule.base == name.host
    return _within(name.host, rule.base)


def _ip_forms(ip: IPAddress) -> tuple[IPAddress, ...]:
    """An address and its IPv4/IPv4-mapped-IPv6 twin, so a rule in either form applies."""
    if isinstance(ip, ipaddress.IPv6Address):
        return (ip, ip.ipv4_mapped) if ip.ipv4_mapped is not None else (ip,)
    return (ip, ipaddress.IPv6Address(f"::ffff:{ip}"))


def _ip_matches(rule: IPRule, forms: tuple[IPAddress, ...]) -> bool:
    return any(f.version == rule.network.version and f in rule.network for f in forms)


def _email_matches(rule: DomainRule | MailboxRule, mailbox: Mailbox) -> bool:
    if isinstance(rule, MailboxRule):
        return rule.matches(mailbox)
    return rule.matches(mailbox.domain)


# --- one level -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Judged:
    """A parsed name: deny-phase refusal (if any) and whether an allow rule admits it."""

    refusal: _Refusal | None
    allowed: Callable[[], bool]


class _Level:
    def __init__(self, label: str, policy: CompiledPolicy) -> None:
        self.label = label
        self.p = policy

    def refuse(self, name: str, name_type: str, refusal: _Refusal) -> PolicyError:
        return PolicyError(name, name_type, self.label, refusal.rule, refusal.reason)

    # Each judge_* parses (MalformedName on failure) and returns the deny-phase outcome.

    def judge_dns(self, text: str) -> _Judged:
        name = parse_dns_name(text)
        refusal = None
        if name.wildcard and not self.p.allow_wildcard_names:
            refusal = _Refusal(WILDCARDS_OFF, "wildcard names are not allowed "
                               "(allow_wildcard_names is false)")
        else:
            refusal = next((_denied_by(r.text) for r in self.p.deny.dns
                            if _dns_deny_hits(r, name)), None)
        return _Judged(refusal, lambda: any(_dns_allow_covers(r, name) for r in self.p.allow.dns))

    def judge_ip(self, ip: IPAddress | str) -> _Judged:
        if isinstance(ip, str):
            try:
                ip = ipaddress.ip_address(ip)
            except ValueError:
                raise MalformedName("not an IP address") from None
        forms = _ip_forms(ip)
        refusal = next((_denied_by(r.text) for r in self.p.deny.ip if _ip_matches(r, forms)), None)
        return _Judged(refusal, lambda: any(_ip_matches(r, forms) for r in self.p.allow.ip))

    def judge_email(self, text: str) -> _Judged:
        mailbox = parse_mailbox(text)
        refusal = next((_denied_by(r.text) for r in self.p.deny.email
                        if _email_matches(r, mailbox)), None)
        return _Judged(refusal, lambda: any(_email_matches(r, mailbox) for r in self.p.allow.email))

    def judge_uri(self, text: str) -> _Judged:
        host = parse_uri_host(text)
        if host.kind != "name":
            refusal = None
            if self.p.has_rules_for("uri"):
                what = "host name" if host.kind == "none" else "host name (its host is an IP)"
                refusal = _Refusal(URI_WITHOUT_HOST_NAME, f"uri rules need a {what}")
            return _Judged(refusal, lambda: False)
        refusal = next((_denied_by(r.text) for r in self.p.deny.uri if r.matches(host.host)),
                       None)
        return _Judged(refusal, lambda: any(r.matches(host.host) for r in self.p.allow.uri))

    def check_san(self, name_type: NameType, shown: str, judge: Callable[[], _Judged]) -> None:
        try:
            judged = judge()
        except MalformedName as exc:
            why = f"malformed {_LABELS[name_type]} ({exc})"
            malformed = _Refusal(f"malformed {name_type}", why)
            raise self.refuse(shown, name_type, malformed) from None
        if judged.refusal is not None:
            raise self.refuse(shown, name_type, judged.refusal)
        if not self.p.allow.any:
            return
        if not self.p.allow.has(name_type):
            rule = f"no allow rule for {name_type}"
            raise self.refuse(shown, name_type, _Refusal(rule, rule))
        if not judged.allowed():
            raise self.refuse(shown, name_type, _Refusal(NOT_IN_ALLOW_LIST, NOT_IN_ALLOW_LIST))

    def check_cn(self, cn: str) -> None:
        folded = cn.casefold()
        for cn_rule in self.p.deny.cn:
            if cn_rule.folded == folded:
                raise self.refuse(cn, "cn", _denied_by(cn_rule.text))
        parsed_as, judged = self._cn_as_type(cn)
        if judged is not None and judged.refusal is not None:
            raise self.refuse(cn, "cn", judged.refusal)
        if not self.p.allow.any:
            return
        if any(r.folded == folded for r in self.p.allow.cn):
            return
        if parsed_as is not None and judged is not None and self.p.allow.has(parsed_as) \
                and judged.allowed():
            return
        if self.p.allow.has("cn") or (parsed_as is not None and self.p.allow.has(parsed_as)):
            rule = NOT_IN_ALLOW_LIST
        else:
            rule = "no allow rule for cn" + (f" or {parsed_as}" if parsed_as else "")
        raise self.refuse(cn, "cn", _Refusal(rule, rule))

    def _cn_as_type(self, cn: str) -> tuple[NameType | None, _Judged | None]:
        """The type ``cn`` parses as (IP, URI with a host name, email, DNS), judged as one."""
        try:
            address = ipaddress.ip_address(cn)
        except ValueError:
            pass
        else:
            return "ip", self.judge_ip(address)
        name_type: NameType
        judge: Callable[[str], _Judged]
        if looks_like_uri(cn):  # before email: "https://user@host/" is a URI
            name_type, judge = "uri", self.judge_uri
            try:
                if parse_uri_host(cn).kind != "name":
                    return None, None
            except MalformedName:
                return None, None
        elif "@" in cn:
            name_type, judge = "email", self.judge_email
        else:
            name_type, judge = "dns", self.judge_dns
        try:
            return name_type, judge(cn)
        except MalformedName:
            return None, None

    def check(self, names: Names) -> None:
        for dns in names.dns:
            self.check_san("dns", dns, partial(self.judge_dns, dns))
        for ip in names.ip:
            self.check_san("ip", str(ip), partial(self.judge_ip, ip))
        for email in names.email:
            self.check_san("email", email, partial(self.judge_email, email))
        for uri in names.uri:
            self.check_san("uri", uri, partial(self.judge_uri, uri))
        for kind, value in names.other:
            raise self.refuse(value, kind, _Refusal(
                UNSUPPORTED, f"{UNSUPPORTED}: name policies cannot judge {kind} names"))
        if names.cn:
            self.check_cn(names.cn)


def check(names: Names, levels: Iterable[tuple[str, Policy | None]]) -> None:
    """Pass if every level's policy admits every name; else PolicyError from the first
    level (in the order given) that refuses, for the first name it refuses.

    A level whose policy is None or has no rules admits everything, malformed names
    included: only levels with rules judge names at all.
    """
    for label, policy in levels:
        if policy is None or not policy.has_rules:
            continue
        _Level(label, compile_policy(policy.x509)).check(names)
