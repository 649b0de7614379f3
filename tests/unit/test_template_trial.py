"""Templates are tried on sample requests before they are stored (``template add``/``check``)."""

from __future__ import annotations

import pytest

from appliance.templates import trial
from appliance.templates.errors import TemplateError
from appliance.templates.shipped import builtin_templates

TLS_ONLY = """{"subject": {"CN": {{ dns_names[0] | tojson }}}, "sans": {{ sans | tojson }},
 "key_usage": ["digital_signature"], "basic_constraints": {"ca": false}}"""


def _outcomes(results: list[trial.SampleOutcome]) -> dict[str, str]:
    return {o.sample: o.outcome for o in results}


@pytest.mark.parametrize("name", sorted(builtin_templates()))
def test_every_shipped_template_passes_strictly(name: str) -> None:
    results = trial.check(name, builtin_templates()[name], strict=True)
    assert {o.outcome for o in results} <= {"rendered", "refused"}


def test_a_template_that_renders_for_no_sample_is_refused_naming_the_fault() -> None:
    with pytest.raises(TemplateError, match=r"sample tls server request \(it renders for none"
                                            r" of the samples\): line 1: undefined: 'nothere'"):
        trial.check("t", '{"subject": {"CN": {{ nothere | tojson }}}}')
    with pytest.raises(TemplateError, match="schema violation"):
        trial.check("t", '{"subject": {"CN": "x"}, "sans": [{"type": "dns", "value": "0.0"}]}')
    with pytest.raises(TemplateError, match="syntax error"):
        trial.check("t", "{% if %}")


def test_a_template_for_one_kind_of_request_is_kept_with_its_faults_reported() -> None:
    results = trial.check("tls-only", TLS_ONLY)
    assert _outcomes(results) == {"tls server": "rendered", "person": "failed",
                                  "device": "failed"}
    assert "no element 0" in results[1].detail
    with pytest.raises(TemplateError, match="sample person request: line 1: undefined"):
        trial.check("tls-only", TLS_ONLY, strict=True)


def test_faults_found_only_when_building_the_certificate_are_caught() -> None:
    # key_encipherment is impossible with the EC samples' keys (only the RSA one renders)
    ku = ('{"subject": {"CN": "x"}, "key_usage": ["digital_signature", "key_encipherment"],'
          ' "basic_constraints": {"ca": false}}')
    assert _outcomes(trial.trial("ku", ku)) == {"tls server": "failed", "person": "rendered",
                                                "device": "failed"}
    twice = ('{"subject": {"CN": "x"}, "basic_constraints": {"ca": false}, "extensions": ['
             '{"oid": "1.2.3.4", "value_der_b64": "BQA="},'
             ' {"oid": "1.2.3.4", "value_der_b64": "BQA="}]}')
    with pytest.raises(TemplateError, match=r"renders for none.*1\.2\.3\.4 appears twice"):
        trial.check("twice", twice)


def test_refusals_are_the_templates_choice_and_sample_data_reaches_data() -> None:
    source = builtin_templates()["mtls-service"]
    assert set(_outcomes(trial.check("m", source)).values()) == {"refused"}
    results = trial.check("m", source, data={"trust_domain": "example.org", "service": "web"},
                          strict=True)
    assert _outcomes(results)["tls server"] == "rendered"
    assert "spiffe://example.org/web" in results[0].detail
