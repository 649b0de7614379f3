"""The policy file: strict YAML, every rule checked and normalised when the file is read.

Rule syntax (each list at most 1000 entries, each entry 1..255 characters, no control
characters):

- ``dns`` and ``uri``: ``example.com`` (exactly that host), ``*.example.com`` (exactly one
  more label), ``**.example.com`` (one or more more labels). Any other asterisk, or a
  leading dot, is an error.
- ``email``: ``user@example.com`` (that mailbox), ``example.com`` (any mailbox at that
  domain), ``.example.com`` (any mailbox at any subdomain, any depth, as in RFC 5280; the
  same as ``**.example.com``), ``*.example.com`` (mailboxes one label below).
- ``ip``: an address or a CIDR network, IPv4 or IPv6; host bits set after the prefix
  (``10.0.0.1/8``) are an error, since the intended network is ambiguous.
- ``cn``: any text, compared with the common name case-insensitively.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, field_validator

from appliance import strict_yaml
from appliance.policy.syntax import (
    Mailbox,
    MalformedName,
    normalise_hostname,
    parse_mailbox,
    quote,
)

MAX_RULES = 1000
MAX_RULE_CHARS = 255

NameType = Literal["dns", "ip", "email", "uri", "cn"]
NAME_TYPES: tuple[NameType, ...] = ("dns", "ip", "email", "uri", "cn")

Rule = Annotated[StrictStr, Field(min_length=1, max_length=MAX_RULE_CHARS)]
Rules = Annotated[tuple[Rule, ...], Field(max_length=MAX_RULES)]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class DomainRule:
    """``exact``: the host itself; ``one``: exactly one label below; ``any``: one or more."""

    text: str
    kind: Literal["exact", "one", "any"]
    base: str

    def matches(self, host: str) -> bool:
        if self.kind == "exact":
            return host == self.base
        if not host.endswith("." + self.base):
            return False
        return self.kind == "any" or "." not in host[: -len(self.base) - 1]


@dataclass(frozen=True)
class MailboxRule:
    text: str
    mailbox: Mailbox

    def matches(self, mailbox: Mailbox) -> bool:
        return mailbox == self.mailbox


@dataclass(frozen=True)
class IPRule:
    text: str
    network: IPNetwork


@dataclass(frozen=True)
class CNRule:
    text: str
    folded: str


def compile_domain_rule(text: str, *, leading_dot: bool = False) -> DomainRule:
    """A ``dns``/``uri`` (or email domain) rule; ValueError says what is wrong."""
    kind: Literal["exact", "one", "any"] = "exact"
    rest = text
    if text.startswith("**."):
        kind, rest = "any", text[3:]
    elif text.startswith("*."):
        kind, rest = "one", text[2:]
    elif text.startswith("."):
        if not leading_dot:
            raise ValueError("a leading dot is ambiguous: write *.domain or **.domain")
        kind, rest = "any", text[1:]
    try:
        return DomainRule(text, kind, normalise_hostname(rest))
    except MalformedName as exc:
        raise ValueError(str(exc)) from None


def compile_email_rule(text: str) -> DomainRule | MailboxRule:
    if "@" in text:
        if "*" in text:
            raise ValueError("no wildcards in a mailbox rule")
        try:
            return MailboxRule(text, parse_mailbox(text))
        except MalformedName as exc:
            raise ValueError(str(exc)) from None
    return compile_domain_rule(text, leading_dot=True)


def compile_ip_rule(text: str) -> IPRule:
    try:
        return IPRule(text, ipaddress.ip_network(text, strict=True))
    except ValueError as exc:
        raise ValueError(f"not an IP address or CIDR network ({exc})") from None


def compile_cn_rule(text: str) -> CNRule:
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise ValueError("control character")
    return CNRule(text, text.casefold())


def _check_all(values: tuple[str, ...], compile_one: Callable[[str], object]) -> tuple[str, ...]:
    for index, value in enumerate(values):
        try:
            compile_one(value)
        except ValueError as exc:
            raise ValueError(f"entry {index} {quote(value)}: {exc}") from None
    return values


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NameRules(_Strict):
    dns: Rules = ()
    ip: Rules = ()
    email: Rules = ()
    uri: Rules = ()
    cn: Rules = ()

    @field_validator("dns", "uri")
    @classmethod
    def _domains(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        return _check_all(values, compile_domain_rule)

    @field_validator("email")
    @classmethod
    def _emails(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        return _check_all(values, compile_email_rule)

    @field_validator("ip")
    @classmethod
    def _ips(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        return _check_all(values, compile_ip_rule)

    @field_validator("cn")
    @classmethod
    def _cns(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        return _check_all(values, compile_cn_rule)

    def count(self) -> int:
        return sum(len(getattr(self, t)) for t in NAME_TYPES)


class X509Policy(_Strict):
    allow: NameRules = NameRules()
    deny: NameRules = NameRules()
    allow_wildcard_names: StrictBool = False

    @property
    def has_rules(self) -> bool:
        return self.allow.count() + self.deny.count() > 0


class Policy(_Strict):
    """One level's name policy (authority, provisioner or ACME account)."""

    x509: X509Policy = X509Policy()

    @property
    def has_rules(self) -> bool:
        return self.x509.has_rules

    def to_yaml(self) -> str:
        """The policy as YAML that ``parse_policy`` reads back to an equal Policy."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def wildcard_notice(policy: Policy, level: str) -> str | None:
    """What an operator setting ``policy`` at ``level`` may not expect about wildcards, or
    None: a level with any rule refuses wildcard request names (``*.example.com``) unless it
    sets ``allow_wildcard_names: true``, deny-only levels included (which otherwise admit
    every name they do not deny), and every level must pass, so an authority policy
    decides this for every provisioner."""
    x = policy.x509
    if not x.has_rules or x.allow_wildcard_names:
        return None
    scope = "for every provisioner and ACME account of this CA" if level == "authority" \
        else "for this provisioner"
    if x.allow.count() == 0:
        what = ("this policy has only deny rules: it admits every name it does not deny, "
                "except wildcard names (*.example.com)")
    else:
        what = ("wildcard names (*.example.com) are refused by this policy, even where an "
                "allow rule such as *.example.com covers every name one stands for")
    return (f"{what}, {scope}; add `allow_wildcard_names: true` under x509 to admit them "
            "(deny rules still apply to every name a wildcard covers)")


def parse_policy(text: str, source: str) -> Policy:
    """``text`` (YAML) as a Policy, or a ConfigError naming each bad entry."""
    return strict_yaml.parse(text, Policy, source, "name policy")


@dataclass(frozen=True)
class CompiledRules:
    dns: tuple[DomainRule, ...]
    ip: tuple[IPRule, ...]
    email: tuple[DomainRule | MailboxRule, ...]
    uri: tuple[DomainRule, ...]
    cn: tuple[CNRule, ...]

    def has(self, name_type: NameType) -> bool:
        return bool(getattr(self, name_type))

    @property
    def any(self) -> bool:
        return any(self.has(t) for t in NAME_TYPES)


@dataclass(frozen=True)
class CompiledPolicy:
    allow: CompiledRules
    deny: CompiledRules
    allow_wildcard_names: bool

    def has_rules_for(self, name_type: NameType) -> bool:
        return self.allow.has(name_type) or self.deny.has(name_type)


def _compile_rules(rules: NameRules) -> CompiledRules:
    return CompiledRules(
        dns=tuple(compile_domain_rule(r) for r in rules.dns),
        ip=tuple(compile_ip_rule(r) for r in rules.ip),
        email=tuple(compile_email_rule(r) for r in rules.email),
        uri=tuple(compile_domain_rule(r) for r in rules.uri),
        cn=tuple(compile_cn_rule(r) for r in rules.cn),
    )


@lru_cache(maxsize=256)
def compile_policy(policy: X509Policy) -> CompiledPolicy:
    """The rules of a validated policy in matchable form (cached: policies are immutable)."""
    return CompiledPolicy(
        _compile_rules(policy.allow), _compile_rules(policy.deny), policy.allow_wildcard_names
    )
