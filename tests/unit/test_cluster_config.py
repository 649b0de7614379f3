"""The ``cluster:`` block: heartbeat and staleness bounds, and the state a reader derives."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from appliance import config_doc
from appliance.cluster.nodes import state_of
from appliance.config import ApplianceConfig, ClusterConfig


def test_defaults_and_bounds() -> None:
    assert (ClusterConfig().heartbeat_seconds, ClusterConfig().stale_after_seconds) == (10, 30)
    assert ClusterConfig(heartbeat_seconds=1, stale_after_seconds=2).stale_after_seconds == 2
    assert ClusterConfig(heartbeat_seconds=300, stale_after_seconds=3600).heartbeat_seconds == 300
    for bad in ({"heartbeat_seconds": 0}, {"heartbeat_seconds": 301},
                {"stale_after_seconds": 3601}, {"heartbeat_seconds": 1, "stale_after_seconds": 1},
                {"heartbeat_seconds": 10, "stale_after_seconds": 10},
                {"heartbeat_seconds": 30}, {"unknown": 1}):
        with pytest.raises(ValidationError):
            ClusterConfig.model_validate(bad)
    with pytest.raises(ValidationError, match=r"more than cluster\.heartbeat_seconds"):
        ApplianceConfig.model_validate({"cluster": {"heartbeat_seconds": 40}})


def test_the_config_document_explains_the_keys() -> None:
    text = config_doc.document(ApplianceConfig())
    assert "\ncluster:\n" in text
    assert "  heartbeat_seconds: 10  # 1..300\n" in text
    assert "  stale_after_seconds: 30  # 2..3600\n" in text
    assert "no longer holds a" in text


def test_state_of() -> None:
    assert state_of({"state": "running"}, 1, 30) == "live"
    assert state_of({"state": "running"}, 31, 30) == "stale"
    assert state_of({}, 31, 30) == "stale"
    assert state_of({"state": "stopped"}, 1, 30) == "stopped"
    assert state_of({"state": "stopped"}, 999, 30) == "stopped"
