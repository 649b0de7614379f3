"""The bounded JSON reader every client body goes through, and the CSR read up front."""

from __future__ import annotations

import json

import pytest

from appliance import bounded_json, rfc3339
from appliance.errors import InputError
from appliance.issuance.csr import load_csr
from tests import bad_csrs


@pytest.mark.parametrize(("raw", "field", "words"), [
    (b'{"a": "\\ud800"}', "a", "surrogate"),
    (b'{"a": {"b": ["x", "\\udfff"]}}', "a.b[1]", "surrogate"),
    (b'{"\\ud800": 1}', "body: a key", "surrogate"),
    (b'{"a": NaN}', "body", "JSON"),
    (b'{"a": -Infinity}', "body", "JSON"),
    (b'{"a": 1e400}', "a", "range"),
    (b"[" * 17 + b"]" * 17, "body" + "[0]" * 16, "deeper"),
    (b"[" * 100_001 + b"]" * 100_001, "body", "larger"),
    (b"[" * 5000 + b"]" * 5000, "body", "deeper"),
    (b'{"a": 1' + b"0" * 5000 + b"}", "body", "JSON"),
    (b'{"a": "' + b"x" * 70_000 + b'"}', "a", "longer"),
    (b"\xc3\x28", "body", "UTF-8"),
    (b"", "body", "JSON"),
])
def test_refused_naming_where(raw: bytes, field: str, words: str) -> None:
    with pytest.raises(InputError) as err:
        bounded_json.loads(raw, "body", max_bytes=200_000)
    assert err.value.field == field
    assert words in str(err.value)


def test_plain_documents_pass_unchanged() -> None:
    doc = {"csr": "x", "n": [1, 2.5, True, None], "d": {"k": "\u00e9\U0001f600"},
           "deep": [[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]}
    assert bounded_json.loads(json.dumps(doc).encode(), "body") == doc


@pytest.mark.parametrize("value", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00",
                                   "1949-12-31T23:59:59Z", "9999-01-01T00:00:00Z", 5, None,
                                   "x" * 65])
def test_rfc3339_refuses_times_out_of_range(value: object) -> None:
    with pytest.raises(ValueError):
        rfc3339.parse(value)


@pytest.mark.parametrize("case", sorted(bad_csrs.cases()))
def test_every_malformed_csr_is_an_input_error_naming_the_field(case: str) -> None:
    der = bad_csrs.cases()[case]
    for form in (der, bad_csrs.pem(der)):
        with pytest.raises(InputError) as err:
            load_csr(form, "csr")
        assert err.value.field == "csr"


def test_a_good_csr_is_read_completely() -> None:
    csr = load_csr(bad_csrs.good_csr("a.test", "*.b.test", cn="a.test"))
    assert csr.is_signature_valid
