"""Ratio checks between two KLDs with stated error rates: is the KLD on one side more than `growth_max` times the
KLD on the other (past the first chunk vs within it, decode vs prefill, a mode vs its base configuration)?

Why this shape (measured and simulated, tests/test_statistics.py):
- The independent units are sequences (corpus windows, decode prompts, mode prompts). Neighbouring positions of one
  sequence share their context, so their KLDs are correlated; treating positions as independent made the old
  bound optimistic (~25% false failures at a true ratio of exactly growth_max).
- Each sequence is summarised by the mean of log KLD over its positions (the log of its geometric mean; KLD is
  clipped at growth_floor first, so an exactly-0 side is a finite log). KLD is heavy-tailed: the arithmetic mean of
  a short run is dominated by a few spikes, and a log-ratio of arithmetic means is far from normal (measured: 9-13%
  false failures with it), while mean logs are close to normal and give a Student t interval its nominal level.
- The ratio is exp(mean of per-sequence log differences) (paired: the same sequences on both sides) or
  exp(difference of the sides' means) with Welch's standard error (unpaired); its one-sided confidence bounds
  exp(D -/+ t * se) are never below 0. Three outcomes: fail when the lower bound exceeds growth_max (the false-failure
  rate at a true ratio of growth_max is 1 - confidence), pass when the upper bound is within it (proven, not merely
  not refuted), inconclusive when the bounds straddle it: a noisy large ratio is never a pass.
- The smallest ratio this run could have detected (80% power) is growth_max * exp((t_conf + t_power) * se).
- What it does not see: the mean log measures the typical position. A fault that spoils a few positions strongly
  (a state lost at chunk starts on a model that forgets fast) moves the arithmetic mean far more (measured: a
  chunked-prefill fault 2.0x in mean log, 126x in mean KLD); the pooled thresholds (kld_mean_max, kld_p99_max) and
  the worst bucket judge that, and the ratio tables show both sides' mean KLD beside the ratio.
- The checks against the bf16 floor count each sequence by the log of its mean KLD instead (`of_means`): both
  sides score the same tokens, so a spike of the target's is mostly the floor's spike at the same position and the
  paired difference stays close to normal, and the floor multiple a fault is sized in (make calibrate) is a ratio of
  mean KLDs, which the mean log understates (a 3.0x decode fault reads 2.1x in mean log). Resampling the embedded
  model's 80 clean corpus windows at a true ratio of floor_max: 5.3% false failures at 8 windows, as for the mean log.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

POWER = 0.80  # the detection probability at which the smallest detectable ratio is stated
EMPTY = {"ratio": None, "ratio_lower": None, "ratio_upper": None, "detectable_ratio": None}


@dataclass
class Side:
    """One side of a ratio: per-sequence mean log KLD (aligned with the other side's when paired), the arithmetic
    mean KLD over every position (shown, and compared with the floor), and how the KLD was obtained."""

    log_means: list[float]
    mean: float | None
    basis: str = "exact"


def log_kld(kld: np.ndarray, floor: float) -> np.ndarray:
    """log(max(KLD, floor)): KLD at or below the floor (fp32 rounding, exact zeros) counts as the floor."""
    return np.log(np.maximum(np.asarray(kld, dtype=np.float64), floor))


def side(sequences: list[np.ndarray], floor: float, basis: str, of_means: bool = False) -> Side:
    """A Side from each sequence's KLD values (NaN-free); sequences with no positions are left out. of_means: each
    sequence counts by the log of its mean KLD instead of its mean log KLD (the vs-floor checks)."""
    kept = [np.asarray(s, dtype=np.float64) for s in sequences if len(s)]
    every = np.concatenate(kept) if kept else np.zeros(0)
    logs = [log_kld(s.mean(), floor) if of_means else log_kld(s, floor).mean() for s in kept]
    return Side([float(v) for v in logs], float(every.mean()) if every.size else None, basis)


def ratio_check(grown: Side, base: Side, paired: bool, growth_max: float, floor: float, confidence: float,
                grown_label: str, base_label: str) -> dict:
    """grown / base KLD against growth_max: pass, fail or inconclusive, with the ratio, its confidence bounds, the
    units and degrees of freedom behind them and the smallest ratio the run could have detected."""
    common = {"growth_max": growth_max, "growth_floor": floor, "confidence": confidence, "paired": paired,
              "basis": {"compared": grown.basis, "base": base.basis}, "kld_compared": grown.mean,
              "kld_base": base.mean, "base_exact": base.mean == 0,
              "units": {"compared": len(grown.log_means), "base": len(base.log_means)}}
    refusal = _inconclusive_reason(grown, base, paired, grown_label, base_label)
    if refusal:
        return {**common, **EMPTY, "status": "inconclusive", "reason": refusal}
    if grown.mean <= floor:
        return {**common, **EMPTY, "status": "pass",
                "reason": f"KLD {grown_label} ({grown.mean:.3g}) is at or below the floor {floor:g}"}
    estimate, stderr, df = _log_difference(grown.log_means, base.log_means, paired)
    margin = t_quantile(confidence, df) * stderr
    ratio, lower, upper = (math.exp(estimate + shift) for shift in (0.0, -margin, margin))
    detectable = growth_max * math.exp(margin + t_quantile(POWER, df) * stderr)
    interval = f"{ratio:.3g}x ({confidence:.0%} bounds {lower:.3g}x-{upper:.3g}x over {_units(grown, base, paired)})"
    if lower > growth_max:
        status, text = "fail", f"KLD {grown_label} is {interval} {base_label}: more than the allowed {growth_max:g}x"
    elif upper <= growth_max:
        status, text = "pass", f"KLD {grown_label} is {interval} {base_label}, within {growth_max:g}x"
    else:
        status, text = "inconclusive", (f"KLD {grown_label} is {interval} {base_label}: the bounds straddle the "
                                        f"allowed {growth_max:g}x (too few or too noisy sequences to tell)")
    return {**common, "ratio": ratio, "ratio_lower": lower, "ratio_upper": upper, "stderr_log": stderr, "df": df,
            "detectable_ratio": detectable, "status": status,
            "reason": f"{text}; smallest ratio this run could detect: {detectable:.3g}x"}


def _inconclusive_reason(grown: Side, base: Side, paired: bool, grown_label: str, base_label: str) -> str | None:
    if grown.mean is None or base.mean is None:
        return f"no KLD {grown_label if grown.mean is None else base_label}"
    if grown.basis != base.basis:
        return (f"the KLD {grown_label} is {_basis(grown.basis)} and {base_label} is {_basis(base.basis)}: a ratio "
                "of KLDs of different bases means nothing")
    if grown.basis == "lower bound":
        return "both KLDs are lower bounds (top-k log-probs): their ratio bounds nothing"
    if paired and len(grown.log_means) != len(base.log_means):
        return f"{len(grown.log_means)} sequences {grown_label} against {len(base.log_means)} {base_label}"
    if min(len(grown.log_means), len(base.log_means)) < 2:
        return "fewer than two sequences on a side: no error estimate (raise corpus.windows, decode.prompts or " \
               "modes.prompts to 2 or more)"
    return None


def _log_difference(grown: list[float], base: list[float], paired: bool) -> tuple[float, float, float]:
    """(estimate, standard error, degrees of freedom) of the difference of mean logs."""
    a, b = np.asarray(grown), np.asarray(base)
    if paired:
        d = a - b
        return float(d.mean()), float(d.std(ddof=1) / math.sqrt(d.size)), d.size - 1
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    stderr = math.sqrt(va + vb)
    # Welch-Satterthwaite; with no spread on either side the pooled degrees of freedom.
    df = (va + vb) ** 2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1)) if va + vb > 0 else a.size + b.size - 2
    return float(a.mean() - b.mean()), stderr, df


def _units(grown: Side, base: Side, paired: bool) -> str:
    if paired:
        return f"{len(grown.log_means)} sequences (paired)"
    return f"{len(grown.log_means)} and {len(base.log_means)} sequences"


def _basis(basis: str) -> str:
    return {"exact": "exact", "estimate": "an estimate", "lower bound": "a lower bound"}.get(basis, str(basis))


@lru_cache(maxsize=256)
def binomial_lower_tail(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p), exact (terms in log space: n may be thousands)."""
    if p <= 0:
        return 1.0
    if p >= 1:
        return float(k >= n)
    log_p, log_q = math.log(p), math.log1p(-p)
    terms = (math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log_p + (n - i) * log_q
             for i in range(0, min(k, n) + 1))
    return min(1.0, sum(math.exp(t) for t in terms))


@lru_cache(maxsize=1024)
def t_quantile(p: float, df: float) -> float:
    """Student t quantile for p >= 0.5 (no scipy here): bisection on the CDF, integrated with Simpson's rule."""
    low, high = 0.0, 1.0
    while _t_cdf(high, df) < p:
        high *= 2
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if _t_cdf(middle, df) < p else (low, middle)
    return (low + high) / 2


def _t_cdf(x: float, df: float) -> float:
    scale = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)
    u = np.linspace(0.0, x, 4001)
    density = scale * (1 + u * u / df) ** (-(df + 1) / 2)
    area = (u[1] - u[0]) / 3 * (density[0] + density[-1] + 4 * density[1:-1:2].sum() + 2 * density[2:-1:2].sum())
    return 0.5 + area
