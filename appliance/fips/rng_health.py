"""Health tests of the token's random numbers (NIST SP 800-90B section 4.4), run at power-on.

The token's RNG makes every key, serial and identifier, so a stuck or biased source must
stop the appliance before it signs. The two approved health tests run on a fresh draw of
token bytes, each byte one sample:

- the repetition count test: a run of one value longer than a source with the claimed
  entropy makes except once in 2**20 tries fails;
- the adaptive proportion test: one value seen too often within a window fails.

We do not assess the token's entropy ourselves (its validation does); the tests claim a
conservative ``H = 4`` bits of min-entropy per byte, so a healthy token (about 8) passes
with an overwhelming margin while a stuck or badly biased one fails. The continuous test
(each draw compared to the previous one) is in :mod:`appliance.hsm.rng`, where the draws are.
"""

from __future__ import annotations

import math
from functools import cache

from appliance.hsm.selftest import Check

ALPHA_LOG2 = 20  # false-positive probability 2**-20 per test (SP 800-90B 4.4)
MIN_ENTROPY = 4.0  # bits per byte claimed for the cutoffs (see above)
WINDOW = 512  # SP 800-90B 4.4.2: W = 512 for non-binary samples
SAMPLE_BYTES = 1024  # drawn from the token at power-on: two full windows


def repetition_cutoff(h: float = MIN_ENTROPY) -> int:
    """C = 1 + ceil(-log2(alpha) / H) (SP 800-90B 4.4.1)."""
    return 1 + math.ceil(ALPHA_LOG2 / h)


@cache
def proportion_cutoff(h: float = MIN_ENTROPY, window: int = WINDOW) -> int:
    """C = 1 + CRITBINOM(W, 2**-H, 1 - alpha) (SP 800-90B 4.4.2), computed exactly."""
    p = 2.0 ** -h
    target = 1.0 - 2.0 ** -ALPHA_LOG2
    total = 0.0
    for k in range(window + 1):
        total += math.comb(window, k) * p ** k * (1 - p) ** (window - k)
        if total >= target:
            return 1 + k
    return window


def repetition_count(samples: bytes) -> Check:
    cutoff = repetition_cutoff()
    run, longest = 0, 0
    previous: int | None = None
    for b in samples:
        run = run + 1 if b == previous else 1
        previous = b
        longest = max(longest, run)
    ok = bool(samples) and longest < cutoff
    return Check("rng-repetition-count", ok,
                 "" if ok else f"a value repeated {longest} times in a row (cutoff {cutoff})")


def adaptive_proportion(samples: bytes) -> Check:
    cutoff = proportion_cutoff()
    worst = 0
    for start in range(0, max(len(samples) - WINDOW + 1, 1), WINDOW):
        window = samples[start:start + WINDOW]
        if not window:
            break
        worst = max(worst, window.count(window[0]))
    ok = len(samples) >= WINDOW and worst < cutoff
    detail = (f"fewer than {WINDOW} samples" if len(samples) < WINDOW else
              f"one value {worst} times in a window of {WINDOW} (cutoff {cutoff})")
    return Check("rng-adaptive-proportion", ok, "" if ok else detail)


def health(samples: bytes) -> list[Check]:
    """Both tests on ``samples`` (token bytes)."""
    return [repetition_count(samples), adaptive_proportion(samples)]
