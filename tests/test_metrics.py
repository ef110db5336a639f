import math
import warnings

import numpy as np
import pytest

from portcheck.compare import metrics as m


def rows(*distributions):
    """log-probabilities of explicit distributions, one row each"""
    with np.errstate(divide="ignore"):
        return np.log(np.array(distributions, dtype=np.float64))


def test_log_softmax_is_stable_and_normalised():
    lp = m.log_softmax(np.array([[1000.0, 1000.0], [0.0, math.log(3.0)]]))
    # [1000, 1000] -> [0.5, 0.5]; [0, ln 3] -> [1/4, 3/4]
    assert lp == pytest.approx(np.log([[0.5, 0.5], [0.25, 0.75]]))


def test_kld_hand_computed_in_llama_cpp_direction():
    # KLD(p || q) for p = [1/2, 1/2], q = [1/4, 3/4]: 1/2 ln(0.5/0.25) + 1/2 ln(0.5/0.75) = 0.5 ln2 + 0.5 ln(2/3)
    expected = 0.5 * math.log(2) + 0.5 * math.log(2 / 3)  # 0.14384
    # the other direction, KLD(q || p) = 1/4 ln(1/2) + 3/4 ln(3/2) = 0.13081, must not be what we get
    assert m.kld_rows(rows([0.5, 0.5]), rows([0.25, 0.75]))[0] == pytest.approx(expected, abs=1e-15)
    reverse = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    assert m.kld_rows(rows([0.25, 0.75]), rows([0.5, 0.5]))[0] == pytest.approx(reverse)


def test_kld_is_zero_for_identical_rows_and_ignores_zero_probabilities():
    ref = rows([0.2, 0.8, 0.0])  # log 0 = -inf: 0 log 0 counts as 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert m.kld_rows(ref, ref)[0] == 0.0
        assert m.kld_rows(ref, rows([0.4, 0.4, 0.2]))[0] == pytest.approx(0.2 * math.log(0.5) + 0.8 * math.log(2))


def test_top1_agreement_and_tie_detection():
    ref = rows([0.40, 0.39, 0.21], [0.40, 0.39, 0.21], [0.40, 0.39, 0.21])
    target_top1 = np.array([0, 1, 2])
    # row 1: ln(0.40/0.39) = 0.0253 nats -> a tie at tolerance 0.05, a real disagreement at 0.01
    # row 2: ln(0.40/0.21) = 0.644 nats -> never a tie
    agree, tie = m.top1_agreement_rows(ref, target_top1, tie_tolerance=0.05)
    assert agree.tolist() == [True, False, False]
    assert tie.tolist() == [False, True, False]
    _, tie = m.top1_agreement_rows(ref, target_top1, tie_tolerance=0.01)
    assert tie.tolist() == [False, False, False]


def test_top5_overlap():
    ref = np.log(np.array([[10, 9, 8, 7, 6, 5, 4, 3, 2, 1]], dtype=float) / 55)  # top5 = {0..4}
    tgt = np.log(np.array([[1, 2, 3, 9, 10, 8, 7, 6, 5, 4]], dtype=float) / 55)  # top5 = {3, 4, 5, 6, 7}
    overlap = m.top_n_overlap_rows(m.top_n_ids(ref), m.top_n_ids(tgt))
    assert overlap.tolist() == [2 / 5]  # {3, 4} shared
    assert m.top_n_overlap_rows(m.top_n_ids(ref), m.top_n_ids(ref)).tolist() == [1.0]


def test_perplexity_of_a_uniform_model_is_the_vocabulary_size():
    vocab, ids = 37, np.array([3, 5, 0, 36, 2])
    lp = m.log_softmax(np.zeros((len(ids), vocab)))
    assert m.perplexity(m.next_token_logprobs(lp, ids[1:])) == pytest.approx(vocab)


def test_next_token_uses_the_following_input_id():
    lp = rows([0.1, 0.9], [0.7, 0.3])
    # row 0 predicts input_ids[1] = 0, row 1 predicts input_ids[2] = 1
    assert np.exp(m.next_token_logprobs(lp, np.array([0, 1]))) == pytest.approx([0.1, 0.3])


def test_delta_p_sign_and_rms():
    # target gives the actual token 0.5 where the reference gives 0.2: Δp = +0.3; then 0.5 vs 0.9: -0.4
    dp = m.delta_p(np.log([0.2, 0.9]), np.log([0.5, 0.5]))
    assert dp == pytest.approx([0.3, -0.4])
    assert m.rms(dp) == pytest.approx(math.sqrt((0.09 + 0.16) / 2))  # 0.35355
    assert m.rms(np.array([])) is None


def test_kld_summary_quantiles():
    summary = m.kld_summary(np.arange(1, 101, dtype=float))
    assert summary["mean"] == 50.5 and summary["median"] == 50.5 and summary["max"] == 100
    assert summary["p99"] == pytest.approx(99.01)  # linear interpolation between 99 and 100
    assert summary["mean_stderr"] == pytest.approx(np.std(np.arange(1, 101), ddof=1) / 10)
    assert m.kld_summary(np.array([]))["mean"] is None


# ---------------------------------------------------------------- top-k


def topk_of(logprobs, k):
    ids = np.argsort(-logprobs, axis=1)[:, :k]
    return ids, np.take_along_axis(logprobs, ids, axis=1)


def test_topk_kld_is_a_lower_bound_and_exact_at_full_width():
    rng = np.random.default_rng(1)
    ref = m.log_softmax(rng.normal(scale=2.0, size=(30, 50)))
    tgt = m.log_softmax(rng.normal(scale=2.0, size=(30, 50)))
    full = m.kld_rows(ref, tgt)
    for k in (1, 2, 5, 10, 25, 49):
        bound = m.kld_rows_topk(ref, *topk_of(tgt, k))
        assert np.all(bound <= full + 1e-12), k
        assert np.all(bound >= 0)
    assert m.kld_rows_topk(ref, *topk_of(tgt, 50)) == pytest.approx(full, rel=1e-12, abs=1e-14)
    # the bound tightens as k grows, on average
    assert m.kld_rows_topk(ref, *topk_of(tgt, 2)).mean() < m.kld_rows_topk(ref, *topk_of(tgt, 25)).mean()


def test_topk_kld_hand_computed_with_floored_rest_mass():
    ref = rows([0.5, 0.3, 0.2])
    # the target claims 0.6 + 0.41 > 1 for its top two: rest mass -0.01 is floored at REST_MASS_FLOOR
    ids, lp = np.array([[0, 1]]), np.log(np.array([[0.6, 0.41]]))
    expected = 0.5 * math.log(0.5 / 0.6) + 0.3 * math.log(0.3 / 0.41) + 0.2 * math.log(0.2 / m.REST_MASS_FLOOR)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert m.kld_rows_topk(ref, ids, lp)[0] == pytest.approx(expected)


def test_topk_kld_with_float32_logprobs_matches_full_kld_at_full_width():
    rng = np.random.default_rng(2)
    ref = m.log_softmax(rng.normal(size=(5, 20)))
    tgt = m.log_softmax(rng.normal(size=(5, 20)))
    ids, lp = topk_of(tgt, 20)
    assert m.kld_rows_topk(ref, ids, lp.astype(np.float32)) == pytest.approx(m.kld_rows(ref, tgt), abs=1e-6)


def test_sort_topk_orders_by_decreasing_logprob():
    ids, lp = m.sort_topk(np.array([[7, 3, 9]]), np.array([[-2.0, -0.5, -1.0]]))
    assert ids.tolist() == [[3, 9, 7]] and lp.tolist() == [[-0.5, -1.0, -2.0]]


# ---------------------------------------------------------------- msprobe


def test_cosine_of_known_vectors():
    assert m.msprobe_metrics(np.array([1.0, 0.0]), np.array([1.0, 1.0]))["cosine"] == pytest.approx(1 / math.sqrt(2))
    assert m.msprobe_metrics(np.array([1.0, 2.0]), np.array([-1.0, -2.0]))["cosine"] == pytest.approx(-1.0)
    assert m.msprobe_metrics(np.zeros(3), np.zeros(3))["cosine"] == 1.0  # msprobe: both zero -> 1
    assert m.msprobe_metrics(np.zeros(3), np.ones(3))["cosine"] is None  # msprobe: N/A


def test_relative_error_with_zeros_in_the_bench():
    # b = 0 and n = 0 -> 0; b = 2, n = 3 -> 0.5; b = 0, n = 1e-3 -> (1e-3 + eps - eps) / eps ~ 1e-3 / eps
    rel = m.relative_error(np.array([0.0, 3.0, 1e-3]), np.array([0.0, 2.0, 0.0]))
    assert rel[0] == 0.0 and rel[1] == 0.5
    assert rel[2] == pytest.approx(1e-3 / np.finfo(np.float64).eps)


def test_error_ratios_on_a_crafted_array():
    bench = np.ones(10)
    npu = 1 + np.array([0, 0, 0, 0.0005, 0.0009, 0.002, 0.004, 0.006, 0.01, 0.1])
    stats = m.msprobe_metrics(npu, bench)
    assert stats["thousandth_err_ratio"] == 0.5  # 5 of 10 below 0.001
    assert stats["five_thousandths_err_ratio"] == 0.7  # 7 of 10 below 0.005
    assert stats["max_abs_err"] == pytest.approx(0.1) and stats["max_rel_err"] == pytest.approx(0.1)


def test_tensor_stats_of_chunks_add_up_to_the_whole():
    rng = np.random.default_rng(3)
    npu, bench = rng.normal(size=(9, 7)), rng.normal(size=(9, 7))
    whole = m.tensor_stats(npu, bench).as_dict()
    parts = (m.tensor_stats(npu[:4], bench[:4]) + m.tensor_stats(npu[4:], bench[4:])).as_dict()
    assert parts == pytest.approx(whole)


@pytest.mark.parametrize(
    "cos, max_abs, mismatch, expected",
    [
        (0.995, 0.5, False, True),  # cosine high enough
        (0.98, 0.0005, False, True),  # cosine low but absolute error tiny
        (0.98, 0.002, False, False),  # cos < 0.99 and MaxAbsErr > 0.001
        (0.85, 0.0, False, False),  # cos < 0.9
        (0.9999, 1.5, False, False),  # MaxAbsErr > 1
        (1.0, 0.0, True, False),  # NaN/inf positions differ
        (None, 0.0, False, False),  # uncomputable cosine
    ],
)
def test_msprobe_pass_rule(cos, max_abs, mismatch, expected):
    assert m.msprobe_pass(cos, max_abs, mismatch) is expected


def test_nonfinite_rows_and_mismatch():
    a = np.array([[1.0, 2.0], [np.nan, 0.0], [np.inf, 1.0]])
    assert m.nonfinite_rows(a).tolist() == [False, True, True]
    assert m.nonfinite_rows(np.array([1.0, -np.inf])).tolist() == [False, True]
    assert not m.nonfinite_mismatch(a, a.copy())
    assert m.nonfinite_mismatch(a, np.nan_to_num(a))
