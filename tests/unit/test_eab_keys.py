"""EAB key ids and HMAC keys are printed for people to paste into ACME clients' command
lines, where a value starting with "-" is taken for an option (certbot's argparse fails
with "expected one argument"): such draws are made again."""

from __future__ import annotations

import itertools
import os
import secrets

from appliance.ops.eab import _b64, _no_leading_dash


def test_a_leading_dash_is_drawn_again() -> None:
    draws = iter([b"\xf8" + b"\x00" * 31, b"\x00" * 32])  # "-" then "A"
    assert _b64(b"\xf8" + b"\x00" * 31).startswith("-")
    assert _no_leading_dash(lambda: next(draws), _b64) == b"\x00" * 32
    names = iter(["-x", "--y", "z"])
    assert _no_leading_dash(lambda: next(names)) == "z"


def test_real_draws_never_start_with_a_dash() -> None:
    keys = [_b64(_no_leading_dash(lambda: os.urandom(32), _b64)) for _ in range(3000)]
    ids = [_no_leading_dash(lambda: secrets.token_urlsafe(16)) for _ in range(3000)]
    assert not any(v.startswith("-") for v in itertools.chain(keys, ids))
    assert len(set(keys)) == 3000 and {len(k) for k in keys} == {43}
