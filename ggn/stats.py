"""Statistics over replicate seeds: mean, standard deviation and n of a metric, and the paired difference of two
variants trained with the same seeds, with its 95% Student-t confidence interval.

A trained number is one sample of a distribution over seeds (and machines). With n = 1 there is no spread to
estimate: the standard deviation and the interval are None, never a made-up width.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Summary:
    mean: float | None
    sd: float | None  # sample standard deviation (n - 1); None for n < 2
    n: int


@dataclass(frozen=True)
class Difference:
    """Mean of paired differences a_i - b_i with its confidence interval (None for n < 2)."""
    mean: float | None
    sd: float | None
    n: int
    low: float | None
    high: float | None

    @property
    def distinguishable(self) -> bool | None:
        """True when the interval excludes 0, False when it contains 0, None without an interval."""
        if self.low is None or self.high is None:
            return None
        return self.low > 0 or self.high < 0


def t_quantile(df: int, confidence: float = CONFIDENCE) -> float:
    """Two-sided Student-t critical value: the interval is mean +/- t * sd / sqrt(n), df = n - 1."""
    from scipy.stats import t

    return float(t.ppf(0.5 + confidence / 2.0, df))


def summarize(values: Sequence[float | None]) -> Summary:
    """Mean and sample standard deviation; any undefined value (None, NaN) makes the summary undefined."""
    n = len(values)
    if n == 0 or any(v is None or v != v for v in values):
        return Summary(None, None, n)
    mean = math.fsum(values) / n
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return Summary(mean, sd, n)


def paired_difference(a: Sequence[float | None], b: Sequence[float | None],
                      confidence: float = CONFIDENCE) -> Difference:
    """a_i - b_i over pairs that share a seed; b of length 1 is a constant (a deterministic reference, such as
    pseudo-GT grouped from the image gradient, which no seed changes)."""
    if len(b) == 1 and len(a) > 1:
        b = list(b) * len(a)
    if len(a) != len(b):
        raise ValueError(f"paired difference needs as many values on each side (got {len(a)} and {len(b)})")
    if any(v is None or v != v for v in (*a, *b)):
        return Difference(None, None, len(a), None, None)
    s = summarize([x - y for x, y in zip(a, b)])
    if s.sd is None:
        return Difference(s.mean, None, s.n, None, None)
    half = t_quantile(s.n - 1, confidence) * s.sd / math.sqrt(s.n)
    return Difference(s.mean, s.sd, s.n, s.mean - half, s.mean + half)
