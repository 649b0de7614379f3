"""Host names as the API compares them, and the external URL and accepted hosts the
configuration derives when they are not written."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from appliance import hosts
from appliance.config import ApplianceConfig, ServiceConfig
from appliance.issuance.pipeline import reservation_timeout
from appliance.web.hostcheck import refusal


@pytest.mark.parametrize(("text", "want"), [
    ("ca.example.com", ("ca.example.com", 443)),
    ("CA.Example.COM:443", ("ca.example.com", 443)),
    ("ca.example.com:8443", ("ca.example.com", 8443)),
    ("127.0.0.1:8443", ("127.0.0.1", 8443)),
    ("[::1]", ("::1", 443)),
    ("[0:0::1]:8443", ("::1", 8443)),
    ("[2001:DB8::1]:443", ("2001:db8::1", 443)),
])
def test_parse_normalises(text: str, want: hosts.Authority) -> None:
    assert hosts.parse(text) == want


@pytest.mark.parametrize("text", [
    "", " ca.example.com", "ca.example.com:", "ca.example.com:0", "ca.example.com:65536",
    "ca.example.com:443:1", "::1", "[::1", "[ca.example.com]", "a b", "ca.example.com/x",
    "user@ca.example.com", "ca.example.com,evil.example", "1.2.3.999", "ca..example.com",
])
def test_parse_refuses(text: str) -> None:
    with pytest.raises(hosts.HostError):
        hosts.parse(text)


def test_render_leaves_out_the_default_port() -> None:
    assert hosts.render(("::1", 8443)) == "[::1]:8443"
    assert hosts.render(("ca.example.com", 443)) == "ca.example.com"


def test_defaults_follow_api_hostname_and_listen_port() -> None:
    svc = ServiceConfig(api_listen="0.0.0.0:9443", api_hostname="CA.example.com")
    assert svc.external_base_url() == "https://ca.example.com:9443"
    assert svc.accepted_hosts() == {("ca.example.com", 9443), ("127.0.0.1", 9443)}
    assert ServiceConfig().external_base_url() == "https://127.0.0.1:8443"
    v6 = ServiceConfig(api_listen="[::]:8443", api_hostname="::1")
    assert v6.external_base_url() == "https://[::1]:8443"


def test_configured_external_url_and_hosts() -> None:
    svc = ServiceConfig(external_url="https://ca.example.com/",
                        allowed_hosts=["ca2.example.com:8443", "[::1]:8443"])
    assert svc.external_base_url() == "https://ca.example.com"
    # The external URL's host always; the TLS names only when no list is written.
    assert svc.accepted_hosts() == {("ca.example.com", 443), ("ca2.example.com", 8443),
                                    ("::1", 8443)}


@pytest.mark.parametrize("service", [
    {"external_url": "http://ca.example.com"}, {"external_url": "https://ca.example.com/acme"},
    {"external_url": "https://user@ca.example.com"}, {"external_url": "https://:443"},
    {"allowed_hosts": ["ca.example.com:99999"]}, {"allowed_hosts": ["*.example.com"]},
])
def test_bad_host_settings_are_refused(service: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        ServiceConfig.model_validate(service)


def _env(host: str | None, target: str = "/1.0/health", proto: str = "HTTP/1.1"
         ) -> dict[str, str]:
    env = {"RAW_URI": target, "SERVER_PROTOCOL": proto}
    if host is not None:
        env["HTTP_HOST"] = host
    return env


def test_refusal() -> None:
    ok = ServiceConfig().accepted_hosts()
    assert refusal(_env("127.0.0.1:8443"), ok) is None
    assert refusal(_env(None, proto="HTTP/1.0"), ok) is None
    assert "no Host" in str(refusal(_env(None), ok))
    assert "evil.example" in str(refusal(_env("evil.example"), ok))
    assert refusal(_env("127.0.0.1"), ok) is not None  # port 443 is not the API's 8443
    assert refusal(_env("127.0.0.1:8443,evil.example"), ok) is not None  # two Host headers
    absolute = "https://evil.example/1.0/health"
    assert "request target" in str(refusal(_env("127.0.0.1:8443", absolute), ok))
    assert refusal(_env("127.0.0.1:8443", "https://127.0.0.1:8443/x"), ok) is None


def test_reservation_timeout_follows_the_request_deadline() -> None:
    cfg = ApplianceConfig.model_validate({"service": {"timeout_seconds": 20},
                                          "database": {"busy_timeout_seconds": 10}})
    assert reservation_timeout(cfg) == 60
    assert reservation_timeout(ApplianceConfig()) == 120
    set_ = ApplianceConfig.model_validate({"service": {"reservation_timeout_seconds": 7}})
    assert reservation_timeout(set_) == 7
