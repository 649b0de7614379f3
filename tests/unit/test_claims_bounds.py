"""Duration bounds no request could meet are refused where they are written."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from appliance.cli.context import cell
from appliance.config import ApplianceConfig, ClaimsConfig
from appliance.provisioners.settings import Claims, check_effective


def test_the_authority_claims_in_the_configuration_must_be_ordered() -> None:
    with pytest.raises(ValidationError, match="min_duration 2h is longer than max_duration 1h"):
        ApplianceConfig.model_validate({"claims": {"min_duration": "2h", "max_duration": "1h"}})
    with pytest.raises(ValidationError, match="default_duration 1d is longer than max_dura"):
        ClaimsConfig(max_duration="12h", default_duration="24h")
    assert ClaimsConfig(max_duration="12h").max_duration == "12h"  # the 24h default: clamped


def test_provisioner_claims_are_checked_alone_and_over_the_authority() -> None:
    with pytest.raises(ValidationError, match="min_duration 2h is longer than max_duration 1h"):
        Claims(min_duration=7200, max_duration=3600)
    with pytest.raises(ValueError, match="min_duration 5m is longer than max_duration 1m"):
        check_effective(Claims(max_duration=60), ClaimsConfig())
    with pytest.raises(ValueError, match="default_duration 2d is longer than max_duration 1d"):
        check_effective(Claims(default_duration=2 * 86400), ClaimsConfig())
    check_effective(Claims(max_duration=3600), ClaimsConfig())  # the 24h default is clamped
    check_effective(Claims(min_duration=3600, max_duration=3600), ClaimsConfig())


def test_cells_print_nothing_as_a_dash() -> None:
    assert [cell(v) for v in (None, "", [], {}, 0, False, "x")] == [
        "-", "-", "-", "-", "0", "False", "x"]
    assert cell({"a": None, "b": [1, 2]}) == "a=-, b=1, 2"
