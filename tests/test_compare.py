import json
import math

import numpy as np
import pytest

from portcheck.compare import compare
from portcheck.compare.compare import compare_dumps, compare_files, parse_thresholds, verdict
from portcheck.dump.logits_file import read_dump, write_dump
from portcheck.engines.outputs import Generation, PromptScores
from portcheck.errors import PortcheckError

META = {"model_sha": "m", "tokenizer_sha": "t", "prompts_sha": "p"}
THRESHOLDS = {
    "kld_mean_max": {"value": 0.005, "anchor": "test"},
    "kld_p99_max": {"value": 0.05, "anchor": "test"},
    "top1_agreement_min": {"value": 0.9, "anchor": "test"},
    "cosine_min": {"value": 0.99, "anchor": "msprobe"},
    "max_abs_err_max": {"value": 1.0, "anchor": "msprobe"},
    "ppl_rel_delta_max": {"value": 0.02, "anchor": "test"},
    "msprobe_rule": {"value": True, "anchor": "msprobe"},
}
VOCAB = 40


def logits_for(lengths=(5, 70), seed=0):
    rng = np.random.default_rng(seed)
    ids = [rng.integers(0, VOCAB, n) for n in lengths]
    return ids, [rng.normal(scale=3.0, size=(n, VOCAB)).astype(np.float32) for n in lengths]


def save(tmp_path, name, ids, logits, greedy=None):
    path = tmp_path / f"{name}.safetensors"
    write_dump(path, [PromptScores(i, x) for i, x in zip(ids, logits)], greedy, {**META, "target": name})
    return read_dump(path)


def save_topk(tmp_path, name, ids, logits, k):
    scores = []
    for i, x in zip(ids, logits):
        lp = x.astype(np.float64) - np.log(np.exp(x.astype(np.float64)).sum(axis=1, keepdims=True))
        top = np.argsort(-lp, axis=1)[:, :k][:, ::-1]  # deliberately unsorted (ascending)
        token_lp = np.append(lp[np.arange(len(i) - 1), i[1:]], np.nan)
        scores.append(PromptScores(i, None, top, np.take_along_axis(lp, top, axis=1), token_lp))
    path = tmp_path / f"{name}.safetensors"
    write_dump(path, scores, None, {**META, "target": name})
    return read_dump(path)


def noisy(logits, scale, seed=1):
    rng = np.random.default_rng(seed)
    return [x + rng.normal(scale=scale, size=x.shape).astype(np.float32) for x in logits]


def test_identical_dumps(tmp_path):
    ids, logits = logits_for()
    greedy = [Generation([1, 2, 3]), Generation([4, 5])]
    ref = save(tmp_path, "cpu-hf-fp32", ids, logits, greedy)
    tgt = save(tmp_path, "npu-vllm-bf16", ids, logits, greedy)
    r = compare_dumps(ref, tgt, THRESHOLDS, tie_tolerance=0.01)
    assert r["kld_mean"] == 0 and r["kld_max"] == 0 and r["kld_p99"] == 0
    assert r["top1_agreement"] == 1 and r["top1_ties"] == 0 and r["top5_overlap"] == 1
    assert r["rms_delta_p"] == 0 and r["delta_ppl"] == 0 and r["ppl_ref"] == r["ppl_target"]
    assert r["cosine_min"] == pytest.approx(1) and r["max_abs_err"] == 0 and r["thousandth_err_ratio"] == 1
    assert r["greedy_first_token_agreement"] == 1 and r["greedy_common_prefix_mean"] == 2.5
    assert r["n_positions"] == 75 and r["n_prompts"] == 2 and r["nonfinite"] == []
    assert r["verdict"]["status"] == "pass" and r["verdict"]["reasons"] == []
    assert all(c["passed"] for c in r["verdict"]["checks"]) and len(r["verdict"]["checks"]) == 7
    assert r["reference"] == {"name": "cpu-hf-fp32", "kind": "full", "path": str(ref.path)}
    json.dumps(r, allow_nan=False)


def test_hand_computed_two_token_vocabulary(tmp_path):
    ids = [np.array([0, 1])]
    ref = save(tmp_path, "cpu-hf-fp32", ids, [np.log(np.full((2, 2), 0.5, np.float32))])
    tgt = save(tmp_path, "cpu-hf-bf16", ids, [np.log(np.array([[0.25, 0.75]] * 2, np.float32))])
    r = compare_dumps(ref, tgt, {}, tie_tolerance=0.0)
    # each row: KLD([1/2, 1/2] || [1/4, 3/4]) = 0.5 ln 2 + 0.5 ln(2/3)
    assert r["kld_mean"] == pytest.approx(0.5 * math.log(2) + 0.5 * math.log(2 / 3), rel=1e-6)
    # the reference's top two are exactly equal: the target's other choice is a tie, not a disagreement
    assert r["top1_agreement"] == 0 and r["top1_ties"] == 2 and r["top1_agreement_with_ties"] == 1
    # row 0 predicts input_ids[1] = 1: p_ref 0.5, p_tgt 0.75 -> Δp +0.25; PPL 1/0.5 = 2 and 1/0.75
    assert r["rms_delta_p"] == pytest.approx(0.25, rel=1e-6) and r["mean_delta_p"] > 0
    assert r["ppl_ref"] == pytest.approx(2.0) and r["ppl_target"] == pytest.approx(4 / 3, rel=1e-6)
    assert r["delta_ppl"] == pytest.approx(4 / 3 - 2, rel=1e-6) and r["n_next_token_positions"] == 1
    assert r["verdict"] == {"status": "pass", "checks": [], "reasons": [], "inconclusive": [], "notes": []}


def test_non_finite_values_are_named_and_fail_without_crashing(tmp_path):
    ids, logits = logits_for()
    target = noisy(logits, 0.01)
    ref, tgt = save(tmp_path, "cpu-hf-fp32", ids, logits), save(tmp_path, "cpu-hf-bf16", ids, target)
    clean = compare_dumps(ref, tgt, THRESHOLDS, 0.01)
    ref_logits = [x.copy() for x in logits]
    ref_logits[0][1, 3] = -np.inf  # a -inf logit still gives a finite KLD: the row must be flagged anyway
    target[1][2, 0] = np.nan
    target[1][3, :] = np.nan
    r = compare_dumps(
        save(tmp_path, "cpu-hf-fp32", ids, ref_logits), save(tmp_path, "npu-vllm-bf16", ids, target), THRESHOLDS, 0.01
    )
    assert r["nonfinite"] == [
        {"prompt": 0, "row": 1, "side": "reference"},
        {"prompt": 1, "row": 2, "side": "target"},
        {"prompt": 1, "row": 3, "side": "target"},
    ]
    assert r["n_positions"] == 75 - 3
    assert r["verdict"]["status"] == "fail"
    assert "target has NaN/inf values at 2 positions: prompt 1 rows 2-3" in r["verdict"]["reasons"]
    assert "reference has NaN/inf values at 1 positions: prompt 0 rows 1" in r["verdict"]["reasons"]
    # metrics come from the finite rows only: the clean run's rows minus the three flagged ones
    flagged = {(0, 1), (1, 2), (1, 3)}
    kept = [k for p, pp in enumerate(clean["per_prompt"]) for t, k in enumerate(pp["kld"]) if (p, t) not in flagged]
    assert r["kld_mean"] == pytest.approx(np.mean(kept))
    assert r["per_prompt"][0]["kld"][1] is None and r["per_prompt"][1]["kld"][2] is None
    assert r["per_prompt"][0]["msprobe_pass"] is False and r["per_prompt"][1]["msprobe_pass"] is False
    json.dumps(r, allow_nan=False)


def test_failing_threshold_names_the_check(tmp_path):
    ids, logits = logits_for()
    ref, tgt = save(tmp_path, "cpu-hf-fp32", ids, logits), save(tmp_path, "npu-vllm-bf16", ids, noisy(logits, 1.0))
    r = compare_dumps(ref, tgt, THRESHOLDS, 0.01)
    failed = {c["name"] for c in r["verdict"]["checks"] if c["passed"] is False}
    assert {"kld_mean_max", "cosine_min", "msprobe_rule"} <= failed
    assert r["verdict"]["status"] == "fail"
    reasons = r["verdict"]["reasons"]
    assert any(text.startswith("kld_mean_max: kld_mean = ") and "is not <= 0.005" in text for text in reasons)
    assert r["msprobe_failed_prompts"] == 2 and r["per_prompt"][0]["msprobe_pass"] is False


def test_first_top1_mismatch_row(tmp_path):
    ids, logits = logits_for()
    target = [x.copy() for x in logits]
    target[1][40, 7] = target[1][40].max() + 20  # an unmistakable disagreement at prompt 1 row 40
    r = compare_dumps(save(tmp_path, "cpu-hf-fp32", ids, logits), save(tmp_path, "cpu-hf-bf16", ids, target), {}, 0.01)
    assert r["per_prompt"][1]["first_top1_mismatch_row"] == 40
    assert r["per_prompt"][1]["first_top1_mismatch_is_tie"] is False
    assert r["per_prompt"][0]["first_top1_mismatch_row"] is None
    assert r["top1_agreement"] == pytest.approx(74 / 75)


def test_chunked_comparison_equals_one_piece(tmp_path, monkeypatch):
    ids, logits = logits_for()
    ref, tgt = save(tmp_path, "cpu-hf-fp32", ids, logits), save(tmp_path, "cpu-hf-bf16", ids, noisy(logits, 0.05))
    whole = compare_dumps(ref, tgt, THRESHOLDS, 0.01)
    monkeypatch.setattr(compare, "CHUNK_ROWS", 3)
    chunked = compare_dumps(ref, tgt, THRESHOLDS, 0.01)
    keys = ("kld_mean", "kld_p99", "cosine_min", "max_abs_err", "max_rel_err", "thousandth_err_ratio", "rms_delta_p")
    for key in keys:
        assert chunked[key] == pytest.approx(whole[key], rel=1e-12), key


def test_greedy_agreement(tmp_path):
    ids, logits = logits_for()
    ref = save(tmp_path, "cpu-hf-fp32", ids, logits, [Generation([1, 2, 3]), Generation([5])])
    tgt = save(tmp_path, "cpu-hf-bf16", ids, logits, [Generation([1, 2, 4]), Generation([6])])
    r = compare_dumps(ref, tgt, {}, 0.01)
    assert r["greedy_first_token_agreement"] == 0.5 and r["greedy_common_prefix_mean"] == 1.0
    assert [p["greedy_common_prefix"] for p in r["per_prompt"]] == [2, 0]
    no_greedy = compare_dumps(ref, save(tmp_path, "npu-vllm-bf16", ids, logits), {}, 0.01)
    assert no_greedy["greedy_first_token_agreement"] is None


# ---------------------------------------------------------------- top-k targets


def test_topk_target_of_the_reference_itself(tmp_path):
    ids, logits = logits_for()
    ref = save(tmp_path, "cpu-hf-fp32", ids, logits)
    r = compare_dumps(ref, save_topk(tmp_path, "cpu-vllm-bf16", ids, logits, k=10), THRESHOLDS, 0.01)
    assert r["kld_is_lower_bound"] is True and r["kld_mean"] == pytest.approx(0, abs=1e-6)
    assert r["top1_agreement"] == 1 and r["top5_overlap"] == 1 and r["rms_delta_p"] == pytest.approx(0, abs=1e-6)
    assert r["cosine_min"] is None and r["max_abs_err"] is None and r["per_prompt"][0]["msprobe_pass"] is None
    checks = {c["name"]: c for c in r["verdict"]["checks"]}
    # A required check without its metric, and a KLD lower bound under its maximum, are inconclusive: the target
    # agrees exactly with the reference here, yet top-k evidence cannot show it.
    assert checks["cosine_min"]["status"] == "inconclusive" and checks["cosine_min"]["passed"] is None
    assert checks["msprobe_rule"]["status"] == "inconclusive"
    assert checks["kld_mean_max"]["lower_bound"] is True and checks["kld_mean_max"]["status"] == "inconclusive"
    assert checks["top1_agreement_min"]["status"] == "pass"
    assert r["verdict"]["status"] == "inconclusive" and not r["verdict"]["reasons"]
    assert any("cosine_min" in text and "not available" in text for text in r["verdict"]["inconclusive"])
    assert any("lower bound" in text for text in r["verdict"]["inconclusive"])
    json.dumps(r, allow_nan=False)


def test_a_lower_bound_over_its_maximum_fails():
    """The true KLD is at least its lower bound: a bound over kld_mean_max proves the failure."""
    summary = {"kld_mean": 0.02, "nonfinite": [], "kld_basis": "lower bound"}
    v = verdict(summary, parse_thresholds({"kld_mean_max": {"value": 0.005, "anchor": "a"}}))
    assert v["status"] == "fail" and v["checks"][0]["lower_bound"] is True


@pytest.mark.parametrize("value", [math.inf, math.nan])
def test_a_non_finite_metric_fails_naming_it(value):
    """An overflowing perplexity (ppl_rel_delta inf or NaN) is a failure, not "not available"."""
    summary = {"ppl_rel_delta": value, "nonfinite": [], "kld_basis": "exact"}
    v = verdict(summary, parse_thresholds({"ppl_rel_delta_max": {"value": 0.01, "anchor": "a"}}))
    assert v["status"] == "fail" and "not finite" in v["reasons"][0] and "ppl_rel_delta" in v["reasons"][0]
    assert v["checks"][0]["value_text"] == str(value)


def test_an_infinite_perplexity_fails_the_comparison(tmp_path):
    """A target certain of the wrong next token (log-prob -800 at every position): its perplexity overflows to
    infinity, and the verdict fails naming ppl_rel_delta instead of calling it "not available"."""
    ids = [np.array([0, 1, 0, 1])]
    ref = save(tmp_path, "cpu-hf-fp32", ids, [np.zeros((4, 2), np.float32)])
    tgt = save(tmp_path, "cpu-hf-bf16", ids, [np.array([[0.0, -800.0], [-800.0, 0.0]] * 2, np.float32)])
    r = compare_dumps(ref, tgt, {"ppl_rel_delta_max": {"value": 0.01, "anchor": "a"}}, 0.0)
    assert r["ppl_target"] is None and r["verdict"]["status"] == "fail"  # JSON has no infinity: null, and a fail
    assert "ppl_rel_delta" in r["verdict"]["reasons"][0] and "not finite" in r["verdict"]["reasons"][0]


def test_topk_target_agrees_with_its_full_version(tmp_path):
    ids, logits = logits_for()
    target = noisy(logits, 0.5)
    ref = save(tmp_path, "cpu-hf-fp32", ids, logits)
    full = compare_dumps(ref, save(tmp_path, "cpu-hf-bf16", ids, target), {}, 0.01)
    for k in (3, 10):
        topk = compare_dumps(ref, save_topk(tmp_path, "cpu-vllm-bf16", ids, target, k=k), {}, 0.01)
        assert 0 < topk["kld_mean"] <= full["kld_mean"] and topk["kld_max"] <= full["kld_max"] + 1e-9
        assert topk["top1_agreement"] == full["top1_agreement"] and topk["top1_ties"] == full["top1_ties"]
        assert topk["rms_delta_p"] == pytest.approx(full["rms_delta_p"], rel=1e-5)
        assert topk["ppl_target"] == pytest.approx(full["ppl_target"], rel=1e-5)
        assert (topk["top5_overlap"] == pytest.approx(full["top5_overlap"])) if k >= 5 else topk["top5_overlap"] is None


def test_topk_nonfinite_row_but_not_the_last_rows_nan(tmp_path):
    ids, logits = logits_for(lengths=(6,))
    tgt = save_topk(tmp_path, "cpu-vllm-bf16", ids, logits, k=5)
    path = tgt.path
    scores = [PromptScores(ids[0], None, tgt.topk_ids[0], tgt.topk_logprobs[0].copy(), tgt.token_logprobs[0].copy())]
    scores[0].token_logprobs[2] = -np.inf
    write_dump(path, scores, None, {**META, "target": "cpu-vllm-bf16"})
    r = compare_dumps(save(tmp_path, "cpu-hf-fp32", ids, logits), read_dump(path), {}, 0.01)
    assert r["nonfinite"] == [{"prompt": 0, "row": 2, "side": "target"}]  # row 5's NaN is by design
    assert r["verdict"]["status"] == "fail"


# ---------------------------------------------------------------- refusals and thresholds


def test_compare_files_refuses_other_model(tmp_path):
    ids, logits = logits_for()
    ref = save(tmp_path, "cpu-hf-fp32", ids, logits)
    other = tmp_path / "npu.safetensors"
    scores = [PromptScores(i, x) for i, x in zip(ids, logits)]
    write_dump(other, scores, None, {**META, "target": "npu-vllm-bf16", "model_sha": "x"})
    with pytest.raises(PortcheckError, match="model_sha differs"):
        compare_files(ref.path, other, THRESHOLDS, 0.01)
    assert compare_files(ref.path, ref.path, THRESHOLDS, 0.01)["verdict"]["status"] == "pass"


def test_topk_reference_is_refused(tmp_path):
    ids, logits = logits_for()
    topk = save_topk(tmp_path, "cpu-vllm-bf16", ids, logits, k=5)
    with pytest.raises(PortcheckError, match="must be a full-logits or compact dump, not top-k"):
        compare_dumps(topk, save(tmp_path, "cpu-hf-fp32", ids, logits), {}, 0.01)


def test_threshold_validation():
    with pytest.raises(PortcheckError, match="unknown threshold 'kld_mean'"):
        parse_thresholds({"kld_mean": {"value": 1}})
    with pytest.raises(PortcheckError, match="must be a mapping"):
        parse_thresholds({"kld_mean_max": 0.1})
    with pytest.raises(PortcheckError, match="true or false"):
        parse_thresholds({"msprobe_rule": {"value": 1}})
    assert parse_thresholds({"msprobe_rule": {"value": False}}) == []


def test_unavailable_required_check_is_inconclusive():
    summary = {"cosine_min": None, "kld_mean": 0.01, "nonfinite": [], "kld_is_lower_bound": False}
    checks = parse_thresholds({"cosine_min": {"value": 0.99, "anchor": "a"}})
    v = verdict(summary, checks)
    assert v["status"] == "inconclusive" and v["checks"][0]["status"] == "inconclusive"
    assert v["checks"][0]["passed"] is None and "cosine_min" in v["inconclusive"][0]
    checks += parse_thresholds({"kld_mean_max": {"value": 0.005, "anchor": "a"}})
    v = verdict(summary, checks)
    assert v["status"] == "fail" and [c["status"] for c in v["checks"]] == ["inconclusive", "fail"]


def test_logprob_target_is_compared_with_logprobs_not_raw_logits(tmp_path):
    """vLLM's full-vocabulary dumps hold log-probs: the same distribution as raw logits shifted by logsumexp."""
    ids, logits = logits_for()
    logprobs = [(x - np.log(np.exp(x.astype(np.float64)).sum(axis=1, keepdims=True))).astype(np.float32) for x in logits]
    ref = save(tmp_path, "cpu-hf-fp32", ids, logits)
    path = tmp_path / "cpu-vllm-bf16.safetensors"
    write_dump(path, [PromptScores(i, x) for i, x in zip(ids, logprobs)], None,
               {**META, "target": "cpu-vllm-bf16", "full_values": "logprobs"})
    r = compare_dumps(ref, read_dump(path), THRESHOLDS, tie_tolerance=0.01)
    assert r["msprobe_basis"] == "logprobs"
    assert r["max_abs_err"] < 1e-4 and r["cosine_min"] > 0.999999
    assert r["kld_max"] < 1e-9 and r["verdict"]["status"] == "pass"
