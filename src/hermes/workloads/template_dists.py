"""The distributions the application templates draw from, fitted to docs/apps.md's statistics.

- Per-call tokens and tool seconds: a shifted lognormal (mirrored when the mean lies below the
  p50) meeting the table's p50 and p90 exactly and, after clipping to plausible bounds, its mean
  (``Fitted``); collapse prompts are packed groups (``PackedGroups``).
- Fan-out: 1 + beta-binomial on 1..max (``FanOut``).
- Loops: a per-step exit probability that meets an aggregate exit frequency under a cap
  (``step_exit_prob``), where the table gives no more than that; where it gives the loop's
  per-run quantiles, a discretised lognormal length fitted to them (``LoopLength``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache, cached_property
from statistics import NormalDist
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

_NORMAL = NormalDist()
_Z90 = _NORMAL.inv_cdf(0.9)
_Z95 = _NORMAL.inv_cdf(0.95)

# ---- per-call demand ----------------------------------------------------------------------------


class CallDist(Protocol):
    def sample(self, rng: np.random.Generator, n: int) -> NDArray[np.float64]:
        """Demands of the ``n`` parallel calls of one stage, in call order."""
        ...


def _lognormal_below(x: float, sigma: float) -> tuple[float, float]:
    """P(X <= x) and E[X; X <= x] for X = exp(sigma * Z)."""
    if x <= 0:
        return 0.0, 0.0
    if math.isinf(x):
        return 1.0, math.exp(sigma * sigma / 2)
    t = math.log(x) / sigma
    return _NORMAL.cdf(t), math.exp(sigma * sigma / 2) * _NORMAL.cdf(t - sigma)


@dataclass(frozen=True)
class Fitted:
    """Y = shift + sign * scale * exp(sigma * Z), clipped to [lo, hi].

    sign is +1 for right skew (mean > p50) and -1 for left skew. Given sigma, shift and scale put
    the p50 and the p90 exactly on the table's values (the bounds lie outside them); sigma is then
    solved so that the mean of the *clipped* variable is the table's, since the clipping that
    keeps values plausible would otherwise move the mean (most for a long mirrored lower tail).
    mean == p50 gives the normal limit.
    """

    mean: float
    p50: float
    p90: float
    lo: float
    hi: float

    def _shape(self, sign: int, sigma: float) -> tuple[float, float]:
        span = self.p90 - self.p50
        scale = span / (math.expm1(_Z90 * sigma) if sign > 0 else -math.expm1(-_Z90 * sigma))
        return self.p50 - sign * scale, scale

    def _clipped_mean(self, sign: int, sigma: float) -> float:
        shift, scale = self._shape(sign, sigma)
        x_lo, x_hi = ((y - shift) / (sign * scale) for y in (self.lo, self.hi))
        (a, y_a), (b, y_b) = sorted([(x_lo, self.lo), (x_hi, self.hi)])
        p_a, m_a = _lognormal_below(a, sigma)
        p_b, m_b = _lognormal_below(b, sigma)
        inside = shift * (p_b - p_a) + sign * scale * (m_b - m_a)
        return y_a * p_a + inside + y_b * (1 - p_b)

    @cached_property
    def _params(self) -> tuple[float, float, float]:
        """(shift, signed scale, sigma); sigma 0 means normal with sd = scale."""
        if not self.lo < self.p50 < self.p90 < self.hi:
            raise ValueError(f"need lo < p50 < p90 < hi: {self}")
        if self.mean == self.p50:
            return self.p50, (self.p90 - self.p50) / _Z90, 0.0
        sign = 1 if self.mean > self.p50 else -1
        # The skew (sign * (clipped mean - p50)) grows with sigma: bisect.
        lo_s, hi_s = 1e-6, 6.0
        if sign * (self._clipped_mean(sign, hi_s) - self.mean) < 0:
            raise ValueError(f"no lognormal reaches this skew within its bounds: {self}")
        for _ in range(80):
            mid = (lo_s + hi_s) / 2
            if sign * (self._clipped_mean(sign, mid) - self.mean) < 0:
                lo_s = mid
            else:
                hi_s = mid
        shift, scale = self._shape(sign, lo_s)
        return shift, sign * scale, lo_s

    def sample(self, rng: np.random.Generator, n: int) -> NDArray[np.float64]:
        shift, scale, sigma = self._params
        z = rng.standard_normal(n)
        y = shift + scale * (np.exp(sigma * z) if sigma > 0 else z)
        return np.clip(y, self.lo, self.hi)


@dataclass(frozen=True)
class PackedGroups:
    """Prompts of one collapse round.

    LangChain packs the summaries greedily into groups under a token limit: every group but the
    last is nearly full, the last holds the remainder. That is why the mean (1440) lies so far
    below the p50 (1712); a single mirrored lognormal would put ~10% of the calls on its floor.
    The last call of a round is the remainder, uniform on [2 * its mean - remainder_hi,
    remainder_hi] with remainder_hi below the p50; the others are normal. A share
    1 / fanout_mean of the calls are remainders, which fixes the full groups' mean and sd from
    the p50 and p90, and the remainder's mean from the overall mean.
    """

    mean: float
    p50: float
    p90: float
    fanout_mean: float
    remainder_hi: float

    @cached_property
    def _params(self) -> tuple[float, float, float]:
        last = 1 / self.fanout_mean  # share of calls that are a round's remainder
        # Every remainder lies below the p50, so the full groups hold the p50 and p90 at these
        # quantiles of their own.
        z50 = _NORMAL.inv_cdf((0.5 - last) / (1 - last))
        z90 = _NORMAL.inv_cdf((0.9 - last) / (1 - last))
        sd = (self.p90 - self.p50) / (z90 - z50)
        full_mean = self.p50 - z50 * sd
        remainder_mean = (self.mean - (1 - last) * full_mean) / last
        remainder_lo = 2 * remainder_mean - self.remainder_hi
        if not 0 < remainder_lo < self.remainder_hi <= self.p50:
            raise ValueError(f"no remainder range fits: {self}")
        return full_mean, sd, remainder_lo

    def sample(self, rng: np.random.Generator, n: int) -> NDArray[np.float64]:
        full_mean, sd, remainder_lo = self._params
        y = np.maximum(rng.normal(full_mean, sd, n), 1.0)
        y[-1] = rng.uniform(remainder_lo, self.remainder_hi)
        return y


def tokens(mean: float, p50: float, p90: float, lo: float = 1.0) -> Fitted:
    # Ten p50-to-p90 spans above the median: clips well under 1% of calls, bounds the tail.
    return Fitted(mean, p50, p90, lo=lo, hi=p50 + 10 * (p90 - p50))


def seconds(mean: float, p50: float, p90: float, max_s: float) -> Fitted:
    return Fitted(mean, p50, p90, lo=0.0, hi=max_s)


@dataclass(frozen=True)
class FanOut:
    """Calls in one stage: 1 + beta-binomial on 1..max_calls with the given mean.

    concentration sets the spread: inf is a plain binomial, small values approach uniform.
    """

    mean: float
    max_calls: int
    concentration: float = math.inf

    def sample(self, rng: np.random.Generator) -> int:
        q = (self.mean - 1) / max(self.max_calls - 1, 1)
        if q <= 0 or q >= 1:
            return round(self.mean)  # a fixed fan-out
        if math.isfinite(self.concentration):
            q = rng.beta(q * self.concentration, (1 - q) * self.concentration)
        return 1 + int(rng.binomial(self.max_calls - 1, q))


ONE = FanOut(1, 1)

# ---- loops ------------------------------------------------------------------------------------


@cache
def step_exit_prob(exit_freq: float, cap: int) -> float:
    """Per-step exit probability of a loop of at most ``cap`` steps whose aggregate exit frequency
    (exits / steps over many runs, the forced exits at the cap included) is ``exit_freq``.

    docs/apps.md's transition probabilities are such aggregate frequencies, measured on real runs
    that stay within the cap. Exiting with probability exit_freq per step *and* stopping at the cap
    would add forced exits: react_fever would average 1.99 thoughts instead of 2.17, and its
    measured thought -> end frequency would be 0.50 instead of 0.461.
    """
    target = 1 / exit_freq  # the mean loop length, (1 - (1 - h)^cap) / h, falls as h grows
    if not 1 <= target <= cap:
        raise ValueError(f"exit frequency {exit_freq} impossible within {cap} steps")
    lo, hi = 1e-9, 1.0
    for _ in range(80):
        h = (lo + hi) / 2
        lo, hi = (h, hi) if (1 - (1 - h) ** cap) / h > target else (lo, h)
    return lo


def loop_length(rng: np.random.Generator, exit_freq: float, cap: int) -> int:
    return min(int(rng.geometric(step_exit_prob(exit_freq, cap))), cap)


@dataclass(frozen=True)
class LoopLength:
    """A loop's number of steps per run, fitted to the table's per-run mean, p50 and p95 and
    capped at its maximum: round(X) clipped to 1..cap with X lognormal.

    A Markov loop (the same exit probability after every step) has a geometric length, far wider
    than measured agent episodes: react_alfw's 15.7 steps on average would have p50 11 and p95
    43 where the runs show 15 and 25. sigma puts the continuous p50 and p95 at the table's
    (ln(p95 / p50) / z95); mu is then solved so that the rounded, capped length has the table's
    mean exactly. The rounded p50 and p95 are checked against the table by the tests.
    """

    mean: float
    p50: float
    p95: float
    cap: int

    @cached_property
    def pmf(self) -> NDArray[np.float64]:
        """P(length = k) for k = 1..cap."""
        if not 1 <= self.p50 < self.p95 <= self.cap or not 1 < self.mean < self.cap:
            raise ValueError(f"need 1 <= p50 < p95 <= cap and 1 < mean < cap: {self}")
        sigma = math.log(self.p95 / self.p50) / _Z95
        lo, hi = -10.0, math.log(self.cap) + 10.0
        for _ in range(100):  # the mean grows with mu: bisect
            mu = (lo + hi) / 2
            lo, hi = (mu, hi) if _rounded_mean(mu, sigma, self.cap) < self.mean else (lo, mu)
        return _rounded_pmf(lo, sigma, self.cap)

    def survival(self) -> NDArray[np.float64]:
        """P(length > k) for k = 0..cap - 1: the chance that a run has step k + 1."""
        return 1.0 - np.concatenate([[0.0], np.cumsum(self.pmf)[:-1]])

    def sample(self, rng: np.random.Generator) -> int:
        cdf = np.cumsum(self.pmf)
        return min(1 + int(np.searchsorted(cdf, rng.random(), side="right")), self.cap)


def _rounded_pmf(mu: float, sigma: float, cap: int) -> NDArray[np.float64]:
    # P(round(X) <= k) = P(X < k + 1/2); everything from cap - 1/2 up is cap.
    upper = [_NORMAL.cdf((math.log(k + 0.5) - mu) / sigma) for k in range(1, cap)]
    cdf = np.array([*upper, 1.0])
    return np.diff(cdf, prepend=0.0)


def _rounded_mean(mu: float, sigma: float, cap: int) -> float:
    return float(np.dot(np.arange(1, cap + 1), _rounded_pmf(mu, sigma, cap)))
