"""Adaptive sample counts: stop sampling a metric once the 95% CI of its median is narrow enough.

The CI is the distribution-free one of the median (order statistics, binomial ranks), so the rule is
deterministic for a given sample stream. Sampling stops when, for every series watched, at least
`floor` samples were taken and the CI lies within +-`rel` of the median; or at `cap` samples.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

LEVEL = 0.95
REL = 0.05
# fewer than 6 samples give no 95% order-statistic CI of the median (n=6: [x1, x6] covers 96.9%)
MIN_FOR_CI = 6


def median_ci(values: Sequence[float], level: float = LEVEL) -> tuple[float, float, float] | None:
    """(median, low, high): the order-statistic `level` CI of the median; None below MIN_FOR_CI
    samples (no such CI exists)."""
    n = len(values)
    if n < MIN_FOR_CI:
        return None
    xs = sorted(values)
    alpha = 1 - level
    # the smallest k >= 1 with P(X <= k) > alpha/2, X ~ Binomial(n, 1/2): CI = [x_(k), x_(n-k+1)]
    # (1-based ranks); the CDF summed incrementally in exact integers (n is in the thousands)
    from fractions import Fraction

    bound = Fraction(alpha).limit_denominator(10**6) / 2 * 2**n  # alpha/2 in units of 2^-n, exact
    c, k = n, 1  # c = comb(n, k)
    cum = 1 + n
    while cum <= bound:
        k += 1
        c = c * (n - k + 1) // k
        cum += c
    med = (xs[(n - 1) // 2] + xs[n // 2]) / 2
    return med, xs[k - 1], xs[n - k]


def ci_halfwidth_rel(values: Sequence[float], level: float = LEVEL) -> float | None:
    """The CI's widest side relative to the median (0.05 = +-5%); None: no CI yet."""
    ci = median_ci(values, level)
    if ci is None:
        return None
    med, lo, hi = ci
    if med == 0:
        return 0.0 if lo == hi == 0 else math.inf
    return max(med - lo, hi - med) / abs(med)


@dataclass
class StopRule:
    """When to stop sampling: every series has >= floor samples and its median's CI within +-rel,
    or `cap` samples were taken."""

    cap: int
    floor: int = MIN_FOR_CI
    rel: float = REL
    level: float = LEVEL
    series: dict[str, list[float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.floor = max(1, min(self.floor, self.cap))

    def add(self, key: str, value: float) -> None:
        self.series.setdefault(key, []).append(value)

    def extend(self, key: str, values: Iterable[float]) -> None:
        self.series.setdefault(key, []).extend(values)

    def done(self) -> bool:
        counts = [len(v) for v in self.series.values()]
        if not counts:
            return False
        if min(counts) >= self.cap:
            return True
        if min(counts) < max(self.floor, MIN_FOR_CI):
            return False
        return all(
            (w := ci_halfwidth_rel(v, self.level)) is not None and w <= self.rel for v in self.series.values()
        )

    def summary(self) -> dict[str, dict]:
        """Per series: samples spent, the CI reached (+-relative), whether it met the target."""
        out = {}
        for key, v in self.series.items():
            w = ci_halfwidth_rel(v, self.level)
            out[key] = {
                "samples": len(v),
                "cap": self.cap,
                "floor": self.floor,
                "ci_rel": None if w is None or math.isinf(w) else round(w, 4),
                "ci_met": w is not None and w <= self.rel,
            }
        return out


def spread_order(n: int) -> list[int]:
    """0..n-1 in an order whose every prefix spreads over the whole range (bit-reversal), so that
    stopping early still samples positions across the list, not only its front."""
    if n <= 0:
        return []
    bits = max(1, (n - 1).bit_length())
    order = [int(format(i, f"0{bits}b")[::-1], 2) for i in range(2**bits)]
    return [i for i in order if i < n]


def sync_stop_rule(cap: int) -> StopRule:
    """The stop rule of the one-change syncs: at most `cap` per kind, never fewer than the report's
    floor for sync_one_s (harness.metrics) nor than a CI needs."""
    from harness.metrics import min_samples

    return StopRule(cap=cap, floor=max(min_samples().get("sync_one_s", 1), MIN_FOR_CI))


def load_stop_rule(cap: int, floor: int = 0) -> StopRule:
    """The stop rule of a load phase, over its request latencies (request_us and
    request_corrected_us): at most `cap` requests (the phase's full schedule), never fewer than
    `floor` (the phase's minimum duration at its rate), the report's floor for request_us, nor
    than a CI needs."""
    from harness.metrics import min_samples

    report = max(min_samples().get("request_us", 1), min_samples().get("request_corrected_us", 1))
    return StopRule(cap=cap, floor=max(floor, report, MIN_FOR_CI))


def schedule_cut(t_start_ns: int, period_ns: float, now_ns: int, n_slots: int) -> int:
    """Slots of an open-loop schedule (slot g intended at t_start + g * period) kept when the
    phase stops at `now`: those intended before it (a slot already due still starts), never more
    than the schedule had."""
    if now_ns <= t_start_ns:
        return min(n_slots, 1)
    return min(n_slots, int((now_ns - t_start_ns) // period_ns) + 1)
