"""A policy with rules refuses wildcard names unless it says otherwise; setting one says so."""

from __future__ import annotations

import pytest

from appliance.policy import Names, PolicyError, check, parse_policy, wildcard_notice

DENY_ONLY = "x509:\n  deny:\n    dns: [bad.example.com]\n"


def test_a_deny_only_policy_refuses_wildcards_and_setting_it_says_so() -> None:
    policy = parse_policy(DENY_ONLY, "t")
    check(Names.from_sans(["www.example.com"]), [("authority", policy)])  # not denied: in
    with pytest.raises(PolicyError, match="allow_wildcard_names is false"):
        check(Names.from_sans(["*.example.org"]), [("authority", policy)])
    notice = wildcard_notice(policy, "authority")
    assert notice is not None
    assert "only deny rules" in notice and "every provisioner" in notice
    assert "allow_wildcard_names: true" in notice


def test_the_switch_admits_wildcards_and_silences_the_notice() -> None:
    policy = parse_policy(DENY_ONLY + "  allow_wildcard_names: true\n", "t")
    check(Names.from_sans(["*.example.org"]), [("authority", policy)])
    # deny rules still apply to every name a wildcard stands for
    with pytest.raises(PolicyError, match=r'denied by "bad\.example\.com"'):
        check(Names.from_sans(["*.example.com"]), [("authority", policy)])
    assert wildcard_notice(policy, "authority") is None
    assert wildcard_notice(parse_policy("x509: {}\n", "t"), "authority") is None  # no rules


def test_an_allow_list_notice_names_the_provisioner_scope() -> None:
    policy = parse_policy("x509:\n  allow:\n    dns: ['*.example.com']\n", "t")
    with pytest.raises(PolicyError):
        check(Names.from_sans(["*.example.com"]), [("provisioner p", policy)])
    notice = wildcard_notice(policy, "provisioner")
    assert notice is not None and "for this provisioner" in notice
