"""The generated appliance.yaml shows every setting and loads back to the same settings."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from appliance import config_doc, strict_yaml
from appliance.config import ApplianceConfig, Settings
from appliance.errors import ConfigError


def _leaves(model: type[BaseModel], prefix: str = "") -> list[str]:
    out = []
    for name, info in model.model_fields.items():
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out += _leaves(ann, f"{prefix}{name}.")
        else:
            out.append(prefix + name)
    return out


def _load(text: str) -> ApplianceConfig:
    return strict_yaml.parse(text, ApplianceConfig, "<generated>", "configuration")


def _get(values: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        values = values[part]
    return values


def test_the_defaults_document_has_every_section_and_setting_and_loads_back() -> None:
    text = config_doc.document(ApplianceConfig(), "header line")
    assert _load(text) == ApplianceConfig()
    plain = yaml.safe_load(text)
    for dotted in _leaves(ApplianceConfig):  # every setting is written out, not left implicit
        _get(plain, dotted)
    assert text.startswith("# header line\n")
    assert "\nservice:\n  # host:port of the HTTPS API" in text
    assert "  api_listen: 127.0.0.1:8443\n" in text
    assert "  workers: 2  # 1..64\n" in text
    assert "  http_server: httptools  # one of: httptools, uvicorn, gthread\n" in text
    assert "  crl_validity: 7d  # a duration" in text
    assert "  # Sharded CRLs: 0 = off" in text
    assert "  crl_shards: 0  # 0..4096\n" in text
    assert "  crl_republish: 1d  # a duration" in text


def test_changed_values_load_back_unchanged() -> None:
    changed = ApplianceConfig.model_validate({
        "node_id": "ca-2", "role": "offline-root",
        "database": {"url": "postgresql://ca@db.example/ca", "pool_size": 9},
        "hsm": {"profile": "/etc/appliance/hsm.yaml", "root_offline": True},
        "claims": {"max_duration": "90d", "default_duration": "30d", "renewal_grace": "1h"},
        "service": {"api_listen": "[::]:9443", "public_base_url": "http://ca.example:80/x y"
                    .replace(" ", "%20"), "tls_dir": "/var/lib/appliance/tls"},
        "ocsp": {"redis_url": "redis://127.0.0.1:6379/0", "validity": "8h"},
        "acme": {"resolvers": ["192.0.2.53", "[2001:db8::53]:5353"],
                 "caa_identities": ["ca.example"], "validation_wait_seconds": 0.5},
        "logging": {"level": "debug"},
        "revocation": {"crl_shards": 64, "crl_republish": "6h"},
    })
    assert _load(config_doc.document(changed)) == changed


def test_passwords_in_urls_are_redacted(tmp_path: Any, monkeypatch: Any) -> None:
    monkeypatch.delenv("APPLIANCE_DATABASE_URL", raising=False)
    assert config_doc.redact_url("postgresql://ca:s3cret@db/ca") == "postgresql://ca:REDACTED@db/ca"
    assert config_doc.redact_url("rediss://:pw@cache:6380/0") == "rediss://:REDACTED@cache:6380/0"
    assert config_doc.redact_url("sqlite:///appliance.db") == "sqlite:///appliance.db"
    cfg = ApplianceConfig.model_validate({"database": {"url": "postgresql://u:pw1@h/db"},
                                          "ocsp": {"redis_url": "redis://:pw2@h:6379/0"}})
    shown = config_doc.document(config_doc.effective(Settings(cfg, tmp_path)))
    assert "pw1" not in shown and "pw2" not in shown and shown.count("REDACTED") == 2


def test_a_section_given_twice_is_refused_not_silently_replaced() -> None:
    text = config_doc.document(ApplianceConfig()) + "service:\n  workers: 8\n"
    with pytest.raises(ConfigError, match=r"found duplicate key 'service'"):
        _load(text)
    with pytest.raises(ConfigError, match=r"found duplicate key 'workers'"):
        _load("service: {workers: 2, workers: 3}\n")
    # a key that overrides one brought in by a YAML merge is not a duplicate
    merged = _load("service: {<<: {workers: 2, threads: 2}, workers: 3}\n")
    assert (merged.service.workers, merged.service.threads) == (3, 2)


@pytest.mark.parametrize("revocation", [{"crl_shards": -1}, {"crl_shards": 4097},
                                        {"crl_republish": "30s"},
                                        {"crl_republish": "7d", "crl_validity": "7d"}])
def test_crl_shard_settings_out_of_bounds_are_refused(revocation: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="crl_"):
        ApplianceConfig.model_validate({"revocation": revocation})
