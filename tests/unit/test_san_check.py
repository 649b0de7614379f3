"""SANs written as text (a token's --san) are classified and checked as the pipeline reads them."""

from __future__ import annotations

import pytest

from appliance.policy import MalformedName, Names, check_common_name, check_san


@pytest.mark.parametrize(("text", "expected"), [
    ("web.example.com", ("dns", "web.example.com")),
    ("Web.EXAMPLE.com", ("dns", "web.example.com")),
    ("*.example.com", ("dns", "*.example.com")),
    ("bücher.example", ("dns", "xn--bcher-kva.example")),
    ("192.0.2.1", ("ip", "192.0.2.1")),
    ("2001:DB8::1", ("ip", "2001:db8::1")),
    ("ops@example.com", ("email", "ops@example.com")),
    ("spiffe://example.org/ns/web", ("uri", "spiffe://example.org/ns/web")),
    ("urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6",
     ("uri", "urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6")),
])
def test_good_names_are_classified_like_the_pipeline(text: str, expected: tuple[str, str]
                                                      ) -> None:
    assert check_san(text) == expected
    flat = Names.from_sans([text])
    kinds = {"dns": flat.dns, "ip": flat.ip, "email": flat.email, "uri": flat.uri}
    assert len(kinds[expected[0]]) == 1  # the same kind as the token's names are read as


@pytest.mark.parametrize(("text", "message"), [
    ("bad name", "is not a DNS name: whitespace"),
    ("*.*.example.com", "is not a DNS name: wildcard only"),
    ("0.0", "is not a DNS name: all-numeric"),
    ("", "is not a DNS name: empty name"),
    ("host.", "trailing dot"),
    ("a" * 64 + ".example", "label longer than 63"),
    ("under_score.example", "other than letters"),
    ("a@@b.example", "is not an email address"),
    ("ops@bad domain", "is not an email address: bad domain"),
    ("https://bad host/", "is not a URI"),
    ("https://h:99999/", "is not a URI: cannot be parsed"),
])
def test_bad_names_are_refused_naming_the_kind_and_the_fault(text: str, message: str) -> None:
    with pytest.raises(MalformedName, match=message):
        check_san(text)


def test_common_names_are_bounded_text() -> None:
    assert check_common_name("Device 42") == "Device 42"
    for bad in ("", "x" * 65, "a\nb"):
        with pytest.raises(MalformedName):
            check_common_name(bad)
