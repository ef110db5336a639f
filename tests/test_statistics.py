"""The ratio checks' statistics (compare/statistics.py): the t quantiles, hand-computed ratios and bounds, the three
outcomes, and their error rates calibrated by simulation on KLD shaped like measured runs (heavy-tailed and
autocorrelated positions, windows as the units), with the default corpus layout."""

from __future__ import annotations

import math

import numpy as np
import pytest

from conftest import default_config
from portcheck.compare import statistics as st
from portcheck.compare.positions import compare_by_position

GROWTH = {"growth_max": 2.0, "floor": 1e-6, "confidence": 0.95}


def check(grown, base, paired=True, basis=("exact", "exact"), **overrides):
    settings = {**GROWTH, **overrides}
    return st.ratio_check(st.Side(list(grown), 1e-4, basis[0]), st.Side(list(base), 1e-4, basis[1]), paired,
                          settings["growth_max"], settings["floor"], settings["confidence"], "later", "first")


@pytest.mark.parametrize("p, df, expected", [(0.95, 1, 6.3138), (0.95, 3, 2.3534), (0.95, 7, 1.8946),
                                             (0.80, 3, 0.9785), (0.99, 2, 6.9646), (0.95, 120, 1.6577)])
def test_t_quantile_matches_the_table(p, df, expected):
    assert st.t_quantile(p, df) == pytest.approx(expected, abs=2e-4)


def test_paired_ratio_by_hand():
    # per-sequence log differences 1.0, 1.2, 1.4: mean 1.2, sd 0.2, se 0.2 / sqrt(3); t(0.95, 2) = 2.91999
    result = check([1.0, 1.2, 1.4], [0.0, 0.0, 0.0])
    se = 0.2 / math.sqrt(3)
    assert result["ratio"] == pytest.approx(math.exp(1.2))
    assert result["ratio_lower"] == pytest.approx(math.exp(1.2 - 2.919986 * se), rel=1e-5)
    assert result["ratio_upper"] == pytest.approx(math.exp(1.2 + 2.919986 * se), rel=1e-5)
    assert result["df"] == 2 and result["status"] == "fail"  # lower bound 2.26x > 2x
    assert result["detectable_ratio"] == pytest.approx(2 * math.exp((2.919986 + st.t_quantile(0.8, 2)) * se))


def test_unpaired_ratio_uses_welch():
    result = check([1.0, 1.2, 1.4, 1.6], [0.0, 0.1], paired=False)
    va, vb = np.var([1.0, 1.2, 1.4, 1.6], ddof=1) / 4, np.var([0.0, 0.1], ddof=1) / 2
    df = (va + vb) ** 2 / (va**2 / 3 + vb**2 / 1)
    assert result["df"] == pytest.approx(df)
    assert result["stderr_log"] == pytest.approx(math.sqrt(va + vb))
    assert result["ratio"] == pytest.approx(math.exp(1.3 - 0.05))


def test_three_outcomes():
    assert check([0.0, 0.1, -0.1, 0.05], [0.0, 0.0, 0.0, 0.0])["status"] == "pass"  # ~1x, bounds well under 2x
    # A noisy 10x ratio: the old delta-method bound went below 0 and passed; it is never a pass now.
    noisy = check([math.log(10) + 3, math.log(10) - 3], [0.0, 0.0])
    assert noisy["ratio"] == pytest.approx(10) and noisy["status"] == "inconclusive"
    assert noisy["ratio_lower"] > 0
    assert check([math.log(10) + 0.1, math.log(10) - 0.1, math.log(10)], [0, 0, 0])["status"] == "fail"


@pytest.mark.parametrize("basis, reason", [(("lower bound", "exact"), "different bases"),
                                           (("estimate", "exact"), "different bases"),
                                           (("lower bound", "lower bound"), "lower bounds")])
def test_mixed_or_bounded_bases_are_inconclusive(basis, reason):
    result = check([5.0, 5.0], [0.0, 0.0], basis=basis)
    assert result["status"] == "inconclusive" and reason in result["reason"] and result["ratio"] is None


def test_one_sequence_is_inconclusive_naming_the_setting():
    result = check([5.0], [0.0])
    assert result["status"] == "inconclusive" and "corpus.windows" in result["reason"]


def test_below_the_floor_passes():
    result = st.ratio_check(st.Side([0.0, 0.0], 1e-7), st.Side([0.0, 0.0], 1e-9), True, 2.0, 1e-6, 0.95, "a", "b")
    assert result["status"] == "pass" and "floor" in result["reason"]


def test_a_side_of_means_counts_each_sequence_by_the_log_of_its_mean():
    """The vs-floor checks' unit: log(mean KLD) per sequence, clipped at the floor; empty sequences left out."""
    sequences = [np.array([1e-4, 3e-4]), np.array([0.0, 0.0]), np.array([])]
    means = st.side(sequences, 1e-9, "exact", of_means=True)
    assert means.log_means == pytest.approx([math.log(2e-4), math.log(1e-9)])
    logs = st.side(sequences, 1e-9, "exact")
    assert logs.log_means == pytest.approx([(math.log(1e-4) + math.log(3e-4)) / 2, math.log(1e-9)])
    assert means.mean == logs.mean == pytest.approx(1e-4)  # 4e-4 over 4 positions


# ---------------------------------------------------------------- calibration by simulation

SIMULATIONS = 2000


def simulated_kld(rng, windows: int, length: int, sdlog: float, rho: float, window_sd: float) -> np.ndarray:
    """[simulations, windows, length] KLD: log-normal with AR(1) correlation along positions and a scale per window.
    Measured on the embedded model (cpu-hf-bf16 vs the reference, corpus): sd of log KLD 0.6-0.8, lag-1
    autocorrelation of log KLD < 0.15; the shape here is twice as spread and correlated (0.5), heavier than that."""
    noise = rng.standard_normal((SIMULATIONS, windows, length))
    series = np.empty_like(noise)
    series[..., 0] = noise[..., 0]
    for i in range(1, length):
        series[..., i] = rho * series[..., i - 1] + math.sqrt(1 - rho**2) * noise[..., i]
    return np.exp(sdlog * series + window_sd * rng.standard_normal((SIMULATIONS, windows, 1))) * 5e-5


def failure_rate(kld: np.ndarray, true_ratio: float, bucket: int = 64) -> tuple[float, float]:
    """The shares of simulated runs the growth check fails and passes, with the KLD past the first bucket scaled."""
    kld = kld.copy()
    kld[..., bucket:] *= true_ratio
    statuses = [growth_status(run, bucket) for run in kld]
    return statuses.count("fail") / len(statuses), statuses.count("pass") / len(statuses)


SHIPPED = default_config()["compare"]["positions"]


def growth_status(windows: np.ndarray, bucket: int, settings: dict = SHIPPED) -> str:
    """The growth check's outcome, with the shipped compare.positions settings by default."""
    floor, confidence = settings["growth_floor"], settings["confidence"]
    past, within = st.side(list(windows[:, bucket:]), floor, "exact"), st.side(list(windows[:, :bucket]), floor, "exact")
    return st.ratio_check(past, within, True, settings["growth_max"], floor, confidence, "past", "within")["status"]


@pytest.mark.parametrize("shape", [dict(sdlog=0.8, rho=0.1, window_sd=0.1), dict(sdlog=1.5, rho=0.5, window_sd=0.3)])
def test_growth_check_error_rates_with_the_default_corpus(shape):
    """Default corpus (8 windows x 255 positions, 64-position buckets) and the shipped compare.positions settings:
    at a true ratio equal to growth_max the check fails at most 5% of runs; at a true 3x it fails >= 80%; at a true
    1x (a healthy port) it passes >= 80%. (At confidence 0.95 the same runs fail 5.9%: mean logs of heavy-tailed KLD
    are close to normal, not exactly; hence the shipped 0.96.)"""
    rng = np.random.default_rng(7)
    kld = simulated_kld(rng, 8, 255, **shape)
    false_failures, _ = failure_rate(kld, 2.0)
    assert false_failures <= 0.05
    caught, _ = failure_rate(kld, 3.0)
    assert caught >= 0.80
    _, healthy_passes = failure_rate(kld, 1.0)
    assert healthy_passes >= 0.80


def test_positions_as_units_would_fail_too_often():
    """The old rule (positions independent, delta-method bound) on correlated positions (AR 0.8, the old 4 x 511
    layout): ~25% false failures at a true ratio of growth_max, which is why the windows are the units."""
    rng = np.random.default_rng(7)
    kld = simulated_kld(rng, 4, 511, sdlog=1.5, rho=0.8, window_sd=0.3)[:500]  # the old default layout
    kld[..., 64:] *= 2.0
    failures = 0
    for run in kld:
        first, later = run[:, :64].ravel(), run[:, 64:].ravel()
        ratio = later.mean() / first.mean()
        rel = math.hypot(later.std(ddof=1) / math.sqrt(later.size) / later.mean(),
                         first.std(ddof=1) / math.sqrt(first.size) / first.mean())
        failures += ratio - 1.96 * ratio * rel > 2.0
    assert failures / len(kld) > 0.15


def floor_status(target: np.ndarray, floor: np.ndarray, settings: dict = SHIPPED) -> str:
    """The vs-floor check's outcome (paired, each sequence by the log of its mean KLD) on [sequences, positions]."""
    clip = settings["growth_floor"]
    return st.ratio_check(st.side(list(target), clip, "exact", True), st.side(list(floor), clip, "exact", True), True,
                          settings["floor_max"], clip, settings["confidence"], "target", "floor")["status"]


@pytest.mark.parametrize("sequences", [8, 4])
def test_floor_check_error_rates_paired_on_the_same_tokens(sequences):
    """The target's KLD is the floor's at the same position times the true ratio times a position's own factor
    (log-normal, sd 0.7, mean 1: the two engines round differently), on heavy-tailed, autocorrelated floor KLD.
    8 windows (the corpus, the decode prompts) or 4 (the old decode default): at a true ratio of floor_max the check
    fails <= 5% of runs, a healthy 1x passes >= 80%; with 8 units a 3x fault fails >= 80%."""
    rng = np.random.default_rng(11)
    floor = simulated_kld(rng, sequences, 128, sdlog=1.5, rho=0.5, window_sd=0.3)
    own = np.exp(0.7 * rng.standard_normal(floor.shape) - 0.7**2 / 2)

    def share(ratio: float, status: str) -> float:
        return sum(floor_status(f * own_f * ratio, f) == status for f, own_f in zip(floor, own)) / len(floor)

    assert share(SHIPPED["floor_max"], "fail") <= 0.05
    assert share(1.0, "pass") >= 0.80
    if sequences == 8:
        assert share(3.0, "fail") >= 0.80
