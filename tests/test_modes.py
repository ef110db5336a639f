"""Engine modes (issue 10 section 4): naming and bad input, what each mode changes in vLLM's arguments, the proof
rules on the engine's counters, the comparison against the reference and the base with an injected fault, and a
real chunked-prefill run on vLLM CPU whose prefill drops its initial state (the fault plugin's state_dropped:99)."""

from __future__ import annotations

import contextlib
import copy
import json

import numpy as np
import pytest
import yaml

from conftest import ROOT, default_config
from portcheck.compare.positions import compare_corpus_files
from portcheck.config import DEFAULT_CORPUS, load_schema, read_corpus_text, validate_config
from portcheck.dump.logits_file import write_dump
from portcheck.engines.outputs import Generation, PromptScores
from portcheck.engines.settings import EngineSettings
from portcheck.errors import PortcheckError
from portcheck.modes.catalog import MODES, active_runs, check_mode_model, mode_settings, parse_run
from portcheck.modes.compare import acceptance_verdict, compare_mode_files
from portcheck.modes.run import mode_proof
from portcheck.report.sections import modes as modes_report

MODES_CONFIG = {"prompts": 4, "prefix_tokens": 192, "max_tokens": 64, "chunk_tokens": 64, "spec_tokens": 1,
                "batch_size": 8}
POSITIONS = {"bucket": 16, "growth_max": 2.0, "growth_floor": 1e-9, "confidence": 0.95}




def validate(config: dict) -> dict:
    return validate_config(config, load_schema(ROOT / "config" / "schema.yaml"), base_dir=ROOT)


# ---------------------------------------------------------------- naming and bad input


def test_a_run_is_a_target_plus_a_mode():
    run = parse_run("npu-vllm-bf16+graph")
    assert (run.name, run.target, run.mode) == ("npu-vllm-bf16+graph", "npu-vllm-bf16", "graph")
    with pytest.raises(PortcheckError, match=r"unknown mode 'turbo'; known modes: graph, prefix-cache, chunked, mtp"):
        parse_run("cpu-vllm-bf16+turbo")
    with pytest.raises(PortcheckError, match=r"is not <target>\+<mode>"):
        parse_run("cpu-vllm-bf16")
    with pytest.raises(PortcheckError, match="is not <device>-<engine>-<dtype>"):
        parse_run("tpu-vllm-bf16+graph")


def test_config_refuses_unknown_modes_hf_targets_and_disabled_targets():
    config = default_config()
    config["modes"] = {"runs": ["cpu-vllm-bf16+turbo", "cpu-hf-bf16+graph", "npu-vllm-bf16+graph"]}
    with pytest.raises(PortcheckError) as error:
        validate(copy.deepcopy(config))
    text = str(error.value)
    assert "modes.runs: mode run 'cpu-vllm-bf16+turbo': unknown mode 'turbo'" in text
    assert "cpu-hf-bf16+graph: modes are vLLM engine modes and cpu-hf-bf16 runs the hf engine" in text
    assert "modes.runs names npu-vllm-bf16+graph, but target npu-vllm-bf16 is not enabled" in text
    config["modes"]["runs"] = ["cpu-vllm-bf16+chunked"]
    assert active_runs(validate(config)) == (["cpu-vllm-bf16+chunked"], [])


REAL_VOCAB = 248_320


def test_the_default_config_needs_no_full_vocabulary_log_probs_at_the_real_vocabulary():
    """Section 6: with the worker's rows, the default runs (eager, chunked, prefix-cache) never ask vLLM for
    full-vocabulary log-probs, so the default config's logprobs_topk -1 passes at 248,320 ids."""
    from portcheck.modes.catalog import full_vocab_problems

    assert full_vocab_problems(validate(default_config()), REAL_VOCAB) == []


def test_full_vocabulary_log_probs_vllm_would_return_where_its_worker_cannot_hook_are_refused_by_name():
    from portcheck.dump.run import check_full_vocab
    from portcheck.modes.catalog import fallback_calls, full_vocab_problems
    from portcheck.targets import parse_target

    config = default_config()
    config["modes"]["runs"] += ["cpu-vllm-bf16+graph", "cpu-vllm-bf16+mtp", "cpu-vllm-bf16+batch"]
    config["modes"]["batched"] = False  # a batch run's base decodes each prompt alone
    problems = full_vocab_problems(validate(config), REAL_VOCAB)
    assert [p.split(":")[0] for p in problems] == ["cpu-vllm-bf16+graph", "cpu-vllm-bf16+mtp", "cpu-vllm-bf16+batch"]
    assert "targets.cpu-vllm-bf16.logprobs_topk is -1" in problems[0] and "corpus windows, mode workload steps" \
        in problems[0] and "set targets.cpu-vllm-bf16.logprobs_topk: 20" in problems[0]
    assert full_vocab_problems(validate(config), 2048) == []  # the embedded model affords them
    config["targets"]["cpu-vllm-bf16"]["logprobs_topk"] = 20
    assert full_vocab_problems(validate(config), REAL_VOCAB) == []
    config["targets"]["cpu-vllm-bf16"].update(logprobs_topk=-1, enforce_eager=False)  # the target's own dump too
    assert full_vocab_problems(validate(config), REAL_VOCAB)[0].startswith("cpu-vllm-bf16: ")
    # the same check before the engine starts, where the vocabulary is first known (a downloaded model)
    with pytest.raises(PortcheckError, match=r"cpu-vllm-bf16\+graph: .*corpus windows"):
        check_full_vocab(parse_target("cpu-vllm-bf16"), EngineSettings(logprobs_topk=-1), REAL_VOCAB,
                         fallback_calls("graph", True, MODES_CONFIG, {"window_length": 511}, None),
                         "cpu-vllm-bf16+graph")


def test_the_repeated_token_share_counts_decoded_tokens_equal_to_the_one_before():
    """Two decodes: 5 5 5 7 (two of three pairs repeat) and 1 2 (none): 2 of 4 pairs; a decode of one token has no
    pair, and none at all gives None, not 0."""
    from portcheck.modes.mtp_reference import repeated_token_share

    assert repeated_token_share([[5, 5, 5, 7], [1, 2]]) == pytest.approx(0.5)
    assert repeated_token_share([[3], [4, 4]]) == 1.0 and repeated_token_share([[3]]) is None


def test_mtp_without_mtp_weights_is_refused_before_the_engine_starts():
    with pytest.raises(PortcheckError, match="mode mtp needs MTP weights, and the model in m has none"):
        check_mode_model("mtp", {"mtp_num_hidden_layers": 0}, "m")
    check_mode_model("mtp", {"mtp_num_hidden_layers": 1}, "m")
    check_mode_model("chunked", {}, "m")


def test_a_speculative_token_count_the_mtp_layers_cannot_serve_is_refused_before_the_engine_starts():
    """vLLM drafts in rounds of the checkpoint's MTP layers: a count above them must be a multiple."""
    with pytest.raises(PortcheckError, match=r"modes.spec_tokens 3 cannot be served by the model in m: its 2 MTP "
                                             r"layers .* set modes.spec_tokens to one of 1, 2, 4"):
        check_mode_model("mtp", {"mtp_num_hidden_layers": 2}, "m", spec_tokens=3)
    for served in (1, 2, 4, 6):
        check_mode_model("mtp", {"mtp_num_hidden_layers": 2}, "m", spec_tokens=served)
    check_mode_model("mtp", {"mtp_num_hidden_layers": 1}, "m", spec_tokens=3)


def test_golden_acceptance_rates_for_more_positions_than_drafted_are_refused():
    config = default_config()
    config["modes"] = {"spec_tokens": 2, "mtp_acceptance": {"golden": [0.85, 0.46, 0.19]}}
    with pytest.raises(PortcheckError, match=r"modes.mtp_acceptance.golden gives 3 per-position rates, but the mtp "
                                             r"runs draft 2 tokens .* raise modes.spec_tokens to 3"):
        validate(config)
    config["modes"]["spec_tokens"] = 3
    assert validate(config)["modes"]["mtp_acceptance"] == {"golden": [0.85, 0.46, 0.19], "tolerance": 0.06}


def test_each_mode_reaches_vllm_through_the_one_mapping():
    from portcheck.engines.vllm.engine_args import engine_arguments
    from portcheck.targets import parse_target

    target = parse_target("cpu-vllm-bf16")
    base = EngineSettings(max_model_len=512, max_num_batched_tokens=512, extra={"vllm_kwargs": {"seed": 3}})

    def arguments(mode):
        return engine_arguments(target, "m", mode_settings(base, mode, MODES_CONFIG))

    assert arguments("graph")["enforce_eager"] is False
    assert arguments("prefix-cache")["enable_prefix_caching"] is True  # over the base's False
    chunked = arguments("chunked")
    assert chunked["enable_chunked_prefill"] is True and chunked["max_num_batched_tokens"] == 64
    assert arguments("mtp")["speculative_config"] == {"method": "mtp", "num_speculative_tokens": 1}
    assert "max_num_seqs" not in arguments("batch")  # vLLM's default holds a batch of 8
    small = engine_arguments(target, "m", mode_settings(EngineSettings(max_num_seqs=2), "batch", MODES_CONFIG))
    assert small["max_num_seqs"] == 8  # else vLLM would split the batch
    for mode in MODES:
        assert arguments(mode)["disable_log_stats"] is False and arguments(mode)["seed"] == 3
    assert engine_arguments(target, "m", base)["enable_prefix_caching"] is False


# ---------------------------------------------------------------- proof from the engine's counters

WORKLOAD = [[1] * 195, [2] * 196]


@pytest.mark.parametrize("mode, evidence, status, says", [
    ("prefix-cache", {"cached_tokens": [128, 128], "counters": {"vllm:prefix_cache_hits": 640}}, "ran",
     "read 256 prompt tokens from the prefix cache (128, 128 per request; vllm:prefix_cache_hits 640)"),
    ("prefix-cache", {"cached_tokens": [0, 0], "counters": {}}, "not run", "no prompt token came from the prefix"),
    ("prefix-cache", {"cached_tokens": [0, 0], "counters": {}, "cache_block_tokens": 192}, "not run",
     "no prompt token came from the prefix"),  # a block the prefix fills could have hit: no block reason
    # the real Qwen3.5-0.8B's shape on vLLM 0.32 CPU: blocks of 640 tokens against the 192-token prefix
    ("prefix-cache", {"cached_tokens": [0, 0], "counters": {}, "cache_block_tokens": 640}, "not run",
     "vLLM's cache block is 640 tokens (cache_config.block_size, raised so one attention page holds a Gated DeltaNet "
     "state), longer than the workload's shared prefix of 192 tokens: only whole blocks are cached, so nothing could "
     "hit and the workload was not decoded; set modes.prefix_tokens to at least 640"),
    ("chunked", {"passes": {"installed": True, "passes": 70, "max_tokens": 64}}, "ran",
     "70 forward passes of at most 64 tokens for prompts of up to 196 tokens"),
    ("chunked", {"passes": {"installed": True, "passes": 66, "max_tokens": 391}}, "not run",
     "the longest forward pass held 391 tokens"),
    ("chunked", {"passes": {"installed": False, "reason": "graph mode"}}, "not run", "not counted: graph mode"),
    ("mtp", {"counters": {"vllm:spec_decode_num_drafts": 0}}, "not run", "show no draft"),
    ("graph", {"compilation": {"mode": "NONE", "counter": {"num_graphs_seen": 0}}}, "not run", "saw no graph"),
    ("graph", {"compilation": {"mode": "VLLM_COMPILE", "cudagraph_mode": "NONE", "device_type": "cpu",
                               "graph_replays": 0, "counter": {"num_graphs_seen": 1, "num_backend_compilations": 2}}},
     "inconclusive", "compiled, no graph replay (vLLM's CPU backend compiles with torch.compile and has no graph "
                     "capture or replay): compilation mode VLLM_COMPILE"),
    ("graph", {"compilation": {"mode": "VLLM_COMPILE", "cudagraph_mode": "FULL_AND_PIECEWISE", "graph_replays": 0,
                               "counter": {"num_graphs_seen": 1, "num_cudagraph_captured": 5}}},
     "inconclusive", "compiled, no graph replay: "),
    ("graph", {"compilation": {"mode": "VLLM_COMPILE", "cudagraph_mode": "FULL_AND_PIECEWISE", "graph_replays": 250,
                               "counter": {"num_graphs_seen": 1, "num_cudagraph_captured": 5}}},
     "ran", "num_cudagraph_captured 5; graph replays during the workload: 250"),
    ("batch", {"batch_size": 8, "passes": {"installed": True, "passes_by_tokens": {"1200": 1, "8": 63}},
               "alone_passes": {"installed": True, "passes_by_tokens": {"150": 2, "1": 126}},
               "alone_vs_batch": {"sequences": 2, "tokens_equal": 2, "max_abs_logprob_delta": 2e-6}}, "ran",
     "63 decode passes held 8 tokens (a step of all 8 sequences), 126 passes held 1 alone; alone vs in the batch: "
     "greedy tokens equal in 2 of 2 sequences, chosen-token log-probs apart by at most 2e-06"),
    ("batch", {"batch_size": 8, "passes": {"installed": True, "passes_by_tokens": {"1200": 1, "4": 63}},
               "alone_passes": {"installed": True, "passes_by_tokens": {"1": 126}}}, "not run",
     "no decode pass held all 8 sequences"),
])
def test_a_mode_counts_as_run_only_when_the_counters_show_it(mode, evidence, status, says):
    proof = mode_proof(mode, evidence, WORKLOAD, MODES_CONFIG)
    assert proof["status"] == status and says in proof["proof"], proof


def test_a_graph_run_compiled_only_is_inconclusive_never_a_pass(tmp_path):
    """compare_mode turns a proof other than "ran" into its status before reading any dump: compiled without graph
    replay is "inconclusive" (not a pass, not "not run"); no proof is "not run"."""
    proof = mode_proof("graph", {"compilation": {"mode": "VLLM_COMPILE", "device_type": "cpu", "graph_replays": None,
                                                 "counter": {"num_graphs_seen": 2}}}, WORKLOAD, MODES_CONFIG)
    path = tmp_path / "proof.json"
    for status in ("inconclusive", "not run"):
        path.write_text(json.dumps({"run": "cpu-vllm-bf16+graph", "mode": "graph", **proof, "status": status}))
        result = compare_mode_files({"proof": path}, {}, 0.04, POSITIONS)
        assert result["status"] == status and "compiled, no graph replay" in result["reason"]


def test_mtp_acceptance_from_the_spec_decode_counters():
    counters = {"vllm:spec_decode_num_drafts": 40, "vllm:spec_decode_num_draft_tokens": 40,
                "vllm:spec_decode_num_accepted_tokens": 10}
    proof = mode_proof("mtp", {"counters": counters}, WORKLOAD, MODES_CONFIG)
    assert proof["status"] == "ran" and proof["acceptance_rate"] == 0.25 and proof["mean_accepted_length"] == 1.25
    assert proof["draft_tokens_per_accepted"] == 4 and proof["per_position"] is None


@pytest.mark.parametrize("prefix, suffix", [("vllm:", ""), ("vllm:", "_total"), ("vllm_", "")])
def test_mtp_acceptance_per_draft_position_and_by_decode_steps(prefix, suffix):
    """Two draft tokens per round (vLLM's definitions, hand-computed): 50 drafts, 100 draft tokens, 40 accepted:
    rate 0.4, length 1.8, positions 30/50 and 10/50. By steps: cumulative counts to step 32 and to step 64, the
    second bucket their difference (20 drafts, 6 + 2 accepted)."""
    def named(counts: dict) -> dict:
        return {f"{prefix}spec_decode_{k}{suffix}": v for k, v in counts.items()} | {"vllm:prefix_cache_hits": 7}

    total = {"num_drafts": 50, "num_draft_tokens": 100, "num_accepted_tokens": 40, "num_accepted_tokens_per_pos":
             [30, 10]}
    first = {"num_drafts": 30, "num_draft_tokens": 60, "num_accepted_tokens": 32, "num_accepted_tokens_per_pos":
             [24, 8]}
    evidence = {"counters": named(total), "generate_seconds": 1.5, "base_timing": {"generate_seconds": 2.5},
                "spec_by_steps": [{"steps": 32, "counts": first},
                                  {"steps": 64, "counts": {**total, "num_accepted_tokens": 40}}]}
    proof = mode_proof("mtp", evidence, WORKLOAD, MODES_CONFIG)
    assert proof["status"] == "ran" and proof["proof"] == "50 drafts of 100 tokens, 40 accepted"
    assert proof["acceptance_rate"] == 0.4 and proof["mean_accepted_length"] == 1.8
    assert proof["per_position"] == [0.6, 0.2] and proof["draft_tokens_per_accepted"] == 2.5
    early, late = proof["acceptance_by_steps"]
    assert (early["steps"], early["drafts"], early["acceptance_rate"], early["per_position"]) == (
        "1-32", 30, 32 / 60, [0.8, 8 / 30])
    assert (late["steps"], late["drafts"], late["accepted"], late["per_position"]) == ("33-64", 20, 8, [0.3, 0.1])
    assert (proof["generate_seconds"], proof["base_generate_seconds"]) == (1.5, 2.5)


def test_a_failed_base_timing_leaves_the_mtp_speed_up_unknown_and_the_run_standing(tmp_path):
    """The base configuration's engine, started after the MTP engine closed, cannot start (here: no checkpoint): the
    error is kept in the evidence with its own log's path, the proof keeps its acceptance, the speed-up is unknown."""
    from portcheck.modes.run import base_timing
    from portcheck.targets import parse_target

    settings = EngineSettings(extra={"log_file": str(tmp_path / "run.engine.log")})
    timing = base_timing(parse_target("cpu-hf-bf16"), tmp_path / "absent", settings, [[1, 2, 3]], 4)
    assert timing["error"] and "generate_seconds" not in timing
    assert timing["log"] == str(tmp_path / "run.engine.base.log")
    counters = {f"vllm:spec_decode_{k}": v for k, v in
                {"num_drafts": 4, "num_draft_tokens": 4, "num_accepted_tokens": 2,
                 "num_accepted_tokens_per_pos": [2]}.items()}
    proof = mode_proof("mtp", {"counters": counters, "generate_seconds": 1.0, "base_timing": timing}, WORKLOAD,
                       MODES_CONFIG)
    assert proof["status"] == "ran" and proof["acceptance_rate"] == 0.5 and proof["base_generate_seconds"] is None
    assert modes_report._speed({"workload": {"prompts": 2, "max_tokens": 4}, "generate_seconds": 1.0,
                                "base_generate_seconds": proof["base_generate_seconds"]}) == "unknown"


@pytest.mark.parametrize("per_position, golden, status, says", [
    ([0.9, 0.45], [0.85, 0.46], "pass", None),                  # 0.45 >= 0.46 - 0.06
    ([0.9, 0.39], [0.85, 0.46], "fail", "draft position 2 accepted 39.0%, under its golden 46.0% minus 6%"),
    ([0.0], [0.5], "fail", "draft position 1 accepted 0.0%"),  # vllm-ascend #9871: nothing accepted
    ([0.9], None, "inconclusive", "acceptance not judged: no golden per-position rates"),
    (None, [0.5], "inconclusive", "vLLM reported no per-position acceptance for 1 positions"),
])
def test_mtp_acceptance_is_held_to_golden_rates_and_unjudged_without_them(per_position, golden, status, says):
    verdict = acceptance_verdict(per_position, {"golden": golden, "tolerance": 0.06})
    assert _status(verdict) == status
    assert says is None or says in " ".join(verdict["reasons"] + verdict["inconclusive"])


def _status(verdict: dict) -> str:
    return "fail" if verdict["reasons"] else "inconclusive" if verdict["inconclusive"] else "pass"


def test_a_reference_acceptance_is_the_golden_rate_unless_nothing_could_fall_under_it():
    reference = {"per_position": [0.4], "drafts": 100}
    verdict = acceptance_verdict([0.39], {"golden": None, "tolerance": 0.06}, reference)
    assert _status(verdict) == "pass" and "acceptance per position 40.0% (100 rounds replayed)" in verdict["notes"][0]
    assert _status(acceptance_verdict([0.2], {"golden": None}, reference)) == "fail"
    untrained = {"per_position": [0.01], "drafts": 100}
    verdict = acceptance_verdict([0.0], {"golden": None, "tolerance": 0.06}, untrained)
    assert _status(verdict) == "inconclusive" and "leaves nothing a port could fall under" in verdict["inconclusive"][0]
    assert "the reference runs vllm" in acceptance_verdict(
        [0.5], {"golden": None}, {"status": "not measured", "reason": "the reference runs vllm"})["inconclusive"][0]


def test_an_acceptance_under_the_line_fails_only_where_the_drafts_make_it_significant():
    """Line 0.77 - 0.06 = 0.71: 29 of 50 accepted has P(X <= 29 | 50, 0.71) = 0.034 (fail at 0.05); 6 of 10 has
    P(X <= 6 | 10, 0.71) = 0.32 (inconclusive)."""
    rule = {"golden": [0.77], "tolerance": 0.06}
    failed = acceptance_verdict([0.58], rule, drafts=50)
    assert _status(failed) == "fail" and "exact binomial p = 0.034 over 50 drafts" in failed["reasons"][0]
    unsure = acceptance_verdict([0.6], rule, drafts=10)
    assert _status(unsure) == "inconclusive" and "too few drafts to tell at 0.05" in unsure["inconclusive"][0]


def test_the_exact_binomial_lower_tail_against_hand_computed_values():
    from portcheck.compare.statistics import binomial_lower_tail

    assert binomial_lower_tail(1, 3, 0.5) == pytest.approx(4 / 8)
    assert binomial_lower_tail(0, 2, 0.3) == pytest.approx(0.49)
    assert binomial_lower_tail(5, 5, 0.9) == pytest.approx(1.0)
    assert binomial_lower_tail(0, 4000, 0.5) == pytest.approx(0.0, abs=1e-300)


# ---------------------------------------------------------------- the comparison, with an injected fault

STEPS, VOCAB = 48, 32


def decode_dump(path, logits: list[np.ndarray], tokens: list[list[int]], target: str, batches=None,
                **meta) -> None:
    scores = [PromptScores(input_ids=np.asarray([5, *t[:-1]]), logits=x.astype(np.float32))
              for x, t in zip(logits, tokens)]
    write_dump(path, scores, [Generation(t) for t in tokens], {
        "target": target, "device": "cpu", "engine": "hf", "dtype": "fp32", "model_sha": "m", "tokenizer_sha": "t",
        "prompts_sha": f"workload:{tokens}", "prompts": [], "decode": {"prompts": [[5]] * len(tokens),
                                                                        "max_tokens": STEPS,
                                                                        **({"batches": batches} if batches else {})},
        **meta})


def mode_files(tmp_path, mode_noise: np.ndarray, proof_status="ran") -> dict:
    """Reference logits; the base run off them by bf16-like noise at every step, the mode by `mode_noise`."""
    rng = np.random.default_rng(0)
    reference = [rng.normal(size=(STEPS, VOCAB)) * 3 for _ in range(3)]
    tokens = [list(map(int, r.argmax(axis=1))) for r in reference]
    base = [r + rng.normal(size=r.shape) * 0.01 for r in reference]
    mode = [r + rng.normal(size=r.shape) * mode_noise[:, None] for r in reference]
    paths = {name: tmp_path / f"{name}.safetensors" for name in ("base", "base_reference", "mode", "mode_reference")}
    decode_dump(paths["base_reference"], reference, tokens, "cpu-hf-fp32")
    decode_dump(paths["mode_reference"], reference, tokens, "cpu-hf-fp32")
    decode_dump(paths["base"], base, tokens, "cpu-vllm-bf16", batches=[3])
    decode_dump(paths["mode"], mode, tokens, "cpu-vllm-bf16", batches=[1, 1, 1])
    paths["proof"] = tmp_path / "proof.json"
    paths["proof"].write_text(json.dumps({"run": "cpu-vllm-bf16+chunked", "mode": "chunked",
                                          "status": proof_status, "proof": "counted"}))
    return paths


def test_a_mode_that_spoils_the_state_after_the_first_chunk_fails_against_the_base(tmp_path):
    noise = np.where(np.arange(STEPS) < 16, 0.01, 0.2)  # exact as the base in the first bucket, then far worse
    result = compare_mode_files(mode_files(tmp_path, noise), {}, 0.04, POSITIONS)
    assert result["status"] == "fail", result["verdict"]
    assert any(r.startswith("decode: mode vs base: KLD in the mode") for r in result["verdict"]["reasons"])
    assert any(r.startswith("decode: growth: ") for r in result["verdict"]["reasons"])
    assert result["vs_base"]["ratio"] > 20 and result["vs_base"]["kld_vs_base_mean"] > 1e-3


def test_a_mode_as_precise_as_the_base_passes_and_an_unproven_one_is_not_run(tmp_path):
    same = compare_mode_files(mode_files(tmp_path, np.full(STEPS, 0.01)), {}, 0.04, POSITIONS)
    assert same["status"] == "pass", same["verdict"]
    assert 0.5 < same["vs_base"]["ratio"] < 2 and same["vs_base"]["tokens_equal"] == 3
    assert same["vs_base"]["steps_compared"] == 3 * STEPS and same["vs_base"]["top1_vs_base"] > 0.95
    # the report's row says how each side decoded the workload (modes.batched), from the two dumps
    row = dict(zip(modes_report.HEADER, modes_report._row("cpu-vllm-bf16+chunked", same)))
    assert row["Decoded: run; base"] == "each prompt alone; as one batch of 3" and row["Verdict"] == "✅ pass"
    unproven = compare_mode_files(mode_files(tmp_path, np.full(STEPS, 0.5), "not run"), {}, 0.04, POSITIONS)
    assert unproven["status"] == "not run" and unproven["reason"] == "counted"


def prefill_files(tmp_path, paths: dict, port_noise: float) -> dict:
    """The corpus side of a mode run: the reference's windows and the target's in the mode, off them by
    `port_noise`; the comparisons compare_corpus writes of the target in its base configuration, off by
    `port_noise` too (a fault the mode does not cause), and of the bf16 floor, off by bf16-like noise. Eight windows
    of 48 positions."""
    rng = np.random.default_rng(1)
    reference = [rng.normal(size=(STEPS, VOCAB)) * 3 for _ in range(8)]
    tokens = [list(map(int, r.argmax(axis=1))) for r in reference]
    sides = {"corpus_reference": (reference, "cpu-hf-fp32"),
             "floor_dump": ([r + rng.normal(size=r.shape) * 0.01 for r in reference], "cpu-hf-bf16"),
             "base_dump": ([r + rng.normal(size=r.shape) * port_noise for r in reference], "cpu-vllm-bf16"),
             "corpus": ([r + rng.normal(size=r.shape) * port_noise for r in reference], "cpu-vllm-bf16")}
    for name, (logits, target) in sides.items():
        paths[name] = tmp_path / f"{name}.safetensors"
        decode_dump(paths[name], logits, tokens, target)
    for name, dump in (("base_corpus", "base_dump"), ("floor_corpus", "floor_dump")):
        paths[name] = tmp_path / f"{name}.json"
        paths[name].write_text(json.dumps(compare_corpus_files(paths["corpus_reference"], paths.pop(dump), {}, 0.04,
                                                               POSITIONS)))
    return paths


def test_a_prefill_fault_in_the_base_and_the_mode_alike_fails_the_modes_floor_check_not_its_base_check(tmp_path):
    """The mode's corpus windows are held to the bf16 floor as the target's corpus windows are (the checks
    `make calibrate` measures for the chunked mode): a kernel off in both configurations, here 5x the floor's noise
    (KLD ~25x), passes "mode vs base" and fails "vs bf16 floor"; without the floor the check says why it did not
    run and the verdict stands on the others; a clean port passes it."""
    positions = {**POSITIONS, "floor_max": 2.0}
    faulty = prefill_files(tmp_path, mode_files(tmp_path, np.full(STEPS, 0.01)), 0.05)
    result = compare_mode_files(faulty, {}, 0.04, positions)
    prefill = result["prefill"]
    assert prefill["vs_base"]["status"] == "pass" and prefill["growth"]["status"] != "fail"
    assert prefill["vs_floor"]["status"] == "fail" and prefill["vs_floor"]["ratio_lower"] > 10
    assert result["status"] == "fail" and [r for r in result["verdict"]["reasons"]
                                           if r.startswith("prefill: vs bf16 floor: ")]
    row = dict(zip(modes_report.HEADER, modes_report._row("cpu-vllm-bf16+chunked", result)))
    assert row["Prefill / bf16 floor (bounds)"] == f"{modes_report.ratio_text(prefill['vs_floor'])} ❌ fail"
    del faulty["floor_corpus"]
    unfloored = compare_mode_files(faulty, {}, 0.04, positions, no_floor="the floor target is not enabled")
    assert unfloored["status"] != "fail" and not unfloored["verdict"]["reasons"]
    assert unfloored["prefill"]["vs_floor"] == {"status": "not run", "reason": "the floor target is not enabled"}
    row = dict(zip(modes_report.HEADER, modes_report._row("cpu-vllm-bf16+chunked", unfloored)))
    assert row["Prefill / bf16 floor (bounds)"] == "⚪ not run: the floor target is not enabled"
    clean = compare_mode_files(prefill_files(tmp_path, faulty, 0.01), {}, 0.04, positions)
    assert clean["status"] != "fail" and clean["prefill"]["vs_floor"]["status"] == "pass"
    assert 0.5 < clean["prefill"]["vs_floor"]["ratio"] < 2


class BlockTooLongEngine:
    """A vLLM engine whose prefix-cache block (640 tokens, as the real shape's on vLLM 0.32 CPU) is longer than the
    workload's shared prefix: anything it is asked to decode or score fails the test."""

    cached_tokens: list = []
    timings = {"engine_start_s": 1.0}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def cache_block_size(self):
        return 640

    def counters(self):
        return {"vllm:prefix_cache_hits": 0}

    def adaptation(self):
        return {}

    def __getattr__(self, name):  # decode, score, score_compact, ...
        raise AssertionError(f"the run called engine.{name}: a mode that cannot act must not decode or score")


def test_a_prefix_cache_run_that_cannot_hit_skips_its_workload_and_its_reference_starts_no_engine(
        tiny_model_dir, tmp_path, monkeypatch):
    from portcheck.dump import decode_reference
    from portcheck.dump.corpus import corpus_job
    from portcheck.dump.logits_file import read_dump
    from portcheck.modes import run

    monkeypatch.setattr(run, "make_engine", lambda *args: BlockTooLongEngine())
    text = read_corpus_text(DEFAULT_CORPUS)
    outputs = {kind: tmp_path / f"prefix-cache.{kind}.safetensors" for kind in ("decode", "corpus")}
    outputs["proof"] = tmp_path / "prefix-cache.json"
    run.run_mode("cpu-vllm-bf16+prefix-cache", tiny_model_dir, ["The capital of France is", "def fib(n):"],
                 EngineSettings(max_model_len=512), text, dict(MODES_CONFIG, prompts=2), outputs,
                 corpus=corpus_job(DEFAULT_CORPUS, {"window_length": 64, "windows": 2}, text))
    proof = json.loads(outputs["proof"].read_text())
    assert proof["status"] == "not run" and proof["evidence"]["cache_block_tokens"] == 640
    assert "longer than the workload's shared prefix of 192 tokens" in proof["proof"]
    assert "the workload was not decoded; set modes.prefix_tokens to at least 640" in proof["proof"]
    reason = ("the prefix cache could not act: vLLM's cache block of 640 tokens is longer than the workload's "
              "shared prefix of 192 tokens")
    for kind in ("decode", "corpus"):
        dump = read_dump(outputs[kind])
        assert dump.num_prompts == 0 and dump.meta["skipped"] == reason

    def no_engine(*_args):
        raise AssertionError("score_mode started the reference's engine for a skipped decode dump")

    # score_mode: the reference's scores of nothing, said as skipped, with no engine start.
    monkeypatch.setattr(decode_reference, "make_engine", no_engine)
    reference = tmp_path / "prefix-cache.reference.safetensors"
    decode_reference.score_decode("cpu-hf-fp32", tiny_model_dir, EngineSettings(), outputs["decode"], reference)
    scored = read_dump(reference)
    assert scored.num_prompts == 0 and scored.meta["skipped"] == reason
    assert scored.meta["scored_for"] == "cpu-vllm-bf16"
    result = compare_mode_files({"proof": outputs["proof"], "mode": outputs["decode"], "mode_reference": reference,
                                 "base": tmp_path / "absent", "base_reference": tmp_path / "absent"},
                                {}, 0.04, POSITIONS)
    assert result["status"] == "not run" and result["reason"] == proof["proof"]


def test_a_dump_of_no_prompt_is_refused_unless_it_says_why(tmp_path):
    from portcheck.dump.logits_file import read_dump

    meta = {"target": "cpu-hf-fp32", "model_sha": "m", "tokenizer_sha": "t", "prompts_sha": "p"}
    with pytest.raises(PortcheckError, match="no prompt scores to write: the prompt set is empty"):
        write_dump(tmp_path / "empty.safetensors", [], None, meta)
    assert not (tmp_path / "empty.safetensors").exists()
    write_dump(tmp_path / "skipped.safetensors", [], None, {**meta, "skipped": "the mode could not act"})
    assert read_dump(tmp_path / "skipped.safetensors").meta["skipped"] == "the mode could not act"
    with pytest.raises(PortcheckError, match="that says it was skipped"):
        decode_dump(tmp_path / "both.safetensors", [np.zeros((STEPS, VOCAB))], [[1] * STEPS], "cpu-hf-fp32",
                    skipped="the mode could not act")


# ---------------------------------------------------------------- for real, on vLLM CPU


@pytest.mark.vllm
def test_chunked_prefill_that_drops_its_initial_state_is_caught(tiny_model_dir, tmp_path):
    """A prefill kernel that ignores the state it should start from (the fault plugin) leaves a prefill in one piece
    exact: the base configuration passes. The chunked mode proves from the worker's pass counter that prefills
    were split, and fails: its corpus windows' KLD is many times the base configuration's."""
    from test_vllm_introspection import fault_active

    from portcheck.dump.corpus import corpus_job
    from portcheck.dump.decode_reference import score_decode
    from portcheck.dump.compact import Storage
    from portcheck.dump.run import (corpus_windows, decode_rows, load_tokenizer, score_windows, tokenize,
                                    write_corpus_dump, write_decode_dump)
    from portcheck.engines.factory import make_engine
    from portcheck.model.checkpoint import model_sha, tokenizer_sha
    from portcheck.modes.run import run_mode
    from portcheck.modes.workload import mode_workload
    from portcheck.targets import parse_target

    prompts = default_config()["prompts"]["list"][:4]
    modes = {**MODES_CONFIG, "prompts": 4, "max_tokens": 16}  # four sequences: enough units for the ratio checks
    text = read_corpus_text(DEFAULT_CORPUS)
    corpus = corpus_job(DEFAULT_CORPUS, {"window_length": 255, "windows": 4}, text)
    tokenizer = load_tokenizer(tiny_model_dir)
    workload = mode_workload(tokenizer, text, tokenize(tokenizer, prompts), modes, 512)
    windows = corpus_windows(tokenizer, corpus, 512)
    meta = {"device": "cpu", "model_sha": model_sha(tiny_model_dir), "tokenizer_sha": tokenizer_sha(tiny_model_dir)}
    paths = {name: tmp_path / f"{name}.safetensors" for name in ("base", "mode", "corpus", "corpus_reference",
                                                                  "base_corpus_dump")}
    paths.update(proof=tmp_path / "proof.json", base_corpus=tmp_path / "base.corpus.json")
    with make_engine(parse_target("cpu-hf-fp32"), tiny_model_dir, EngineSettings(threads=1)) as reference:
        write_corpus_dump(score_windows(reference, windows, paths["corpus_reference"], Storage()), {
            **meta, "target": "cpu-hf-fp32", "engine": "hf", "dtype": "fp32"}, corpus)
    settings = EngineSettings(max_model_len=512, max_num_seqs=2, logprobs_topk=-1,
                              extra={"log_file": str(tmp_path / "engine.log")})
    vllm_meta = {**meta, "target": "cpu-vllm-bf16", "engine": "vllm", "dtype": "bf16"}
    with make_engine(parse_target("cpu-vllm-bf16"), tiny_model_dir, settings) as engine:
        write_decode_dump(paths["base"], decode_rows(engine, workload, modes["max_tokens"], Storage()), vllm_meta,
                          modes["max_tokens"])
        write_corpus_dump(score_windows(engine, windows, paths["base_corpus_dump"], Storage()), vllm_meta, corpus)
    base_corpus = compare_corpus_files(paths["corpus_reference"], paths["base_corpus_dump"], {}, 0.04, POSITIONS_64)
    paths["base_corpus"].write_text(json.dumps(base_corpus))
    with fault_active("state_dropped:99"):
        run_mode("cpu-vllm-bf16+chunked", tiny_model_dir, prompts, settings, text, modes,
                 {"decode": paths["mode"], "proof": paths["proof"], "corpus": paths["corpus"]}, corpus=corpus)
    for name in ("base", "mode"):
        paths[f"{name}_reference"] = tmp_path / f"{name}.reference.safetensors"
        score_decode("cpu-hf-fp32", tiny_model_dir, EngineSettings(threads=1), paths[name],
                     paths[f"{name}_reference"])
    result = compare_mode_files(paths, {}, 0.04, POSITIONS_64)
    print(result["proof"], result["verdict"], result["prefill"]["growth"], result["prefill"]["vs_base"])
    assert "forward passes of at most 64 tokens" in result["proof"]
    assert result["batches"]["mode"] == [4]  # modes.batched: one batch, its prefills split across the passes
    assert base_corpus["verdict"]["status"] == "pass" and base_corpus["growth"]["ratio"] < 2
    # Two windows share each 64-token pass, so a window's chunks do not start at its bucket boundaries: every
    # bucket is spoiled and the growth check alone is too noisy; the same target's base configuration is not.
    assert result["status"] == "fail"
    assert result["prefill"]["overall"]["kld_mean"] > 20 * base_corpus["overall"]["kld_mean"]
    # The windows' KLD grows past their first chunk (each window its own unit), and against the base configuration
    # the mode is no pass: its typical position (mean log KLD) is ~2x the base's, its mean KLD >20x (a few positions
    # right after each lost state carry most of it).
    assert [r for r in result["verdict"]["reasons"] if r.startswith("prefill: growth: KLD past the first bucket")]
    assert result["prefill"]["vs_base"]["status"] != "pass"


@pytest.mark.parametrize("batched", [True, False])
def test_the_mode_workload_is_batched_as_configured_alike_in_the_base_and_the_runs(batched):
    """modes.batched (default true) reaches the engine's decode for the base configuration's workload, which the
    mode runs decode through the same function (modes.run), so a run and its base differ by the mode alone."""
    from portcheck.dump.compact import Storage
    from portcheck.dump.run import workload_rows

    calls = []

    class Recorder:
        def decode(self, prompts, max_new_tokens, together=False, compact=None, alone=False, mixed_batch=False):
            calls.append({"alone": alone, "mixed_batch": mixed_batch, "together": together})
            return []

    config = default_config()
    del config["modes"]["batched"]  # the schema's default
    assert validate_config(config, load_schema(ROOT / "config" / "schema.yaml"), base_dir=ROOT)["modes"]["batched"]
    workload_rows(Recorder(), [[1, 2], [3, 4]], {"max_tokens": 4, "batched": batched}, Storage())
    assert calls == [{"alone": not batched, "mixed_batch": batched, "together": False}]


POSITIONS_64 = {"bucket": 64, "growth_max": 2.0, "growth_floor": 1e-9, "confidence": 0.95}


def test_the_batch_mode_decodes_the_workload_first_in_a_batch_of_the_other_prompts():
    from portcheck.modes.workload import batch_workload, mode_workload

    class Tokenizer:
        def __call__(self, text):
            return {"input_ids": [ord(ch) % 50 for ch in text]}

    prompts = [[1, 2], [3], [4, 5, 6]]
    modes = {**MODES_CONFIG, "prompts": 2, "prefix_tokens": 4, "batch_size": 5}
    batch = batch_workload(Tokenizer(), "abcdefgh", prompts, modes, None)
    assert batch[:2] == mode_workload(Tokenizer(), "abcdefgh", prompts, modes, None)
    assert [b[4:] for b in batch] == [[1, 2], [3], [4, 5, 6], [1, 2], [3]]


@pytest.mark.vllm
def test_a_kernel_wrong_only_in_batches_is_caught_by_the_batch_mode(tiny_model_dir, tmp_path):
    """A GDN kernel that is wrong only when 3 or more sequences share a decode step (the fault plugin): the base
    configuration decodes each sequence alone and passes; the batch mode proves from the worker's pass counter that
    its steps held the whole batch, sees the workload's log-probs move against the same sequences alone, and fails
    against the base."""
    from test_vllm_introspection import fault_active

    from portcheck.dump.decode_reference import score_decode
    from portcheck.dump.compact import Storage
    from portcheck.dump.run import decode_rows, load_tokenizer, tokenize, write_decode_dump
    from portcheck.engines.factory import make_engine
    from portcheck.model.checkpoint import model_sha, tokenizer_sha
    from portcheck.modes.run import run_mode
    from portcheck.modes.workload import mode_workload
    from portcheck.targets import parse_target

    prompts = default_config()["prompts"]["list"][:4]
    modes = {**MODES_CONFIG, "prompts": 4, "max_tokens": 32, "batch_size": 4}
    text = read_corpus_text(DEFAULT_CORPUS)
    tokenizer = load_tokenizer(tiny_model_dir)
    workload = mode_workload(tokenizer, text, tokenize(tokenizer, prompts), modes, 512)
    paths = {name: tmp_path / f"{name}.safetensors" for name in ("base", "mode")}
    paths["proof"] = tmp_path / "proof.json"
    settings = EngineSettings(max_model_len=512, max_num_seqs=2, logprobs_topk=-1,
                              extra={"log_file": str(tmp_path / "engine.log")})
    meta = {"device": "cpu", "model_sha": model_sha(tiny_model_dir), "tokenizer_sha": tokenizer_sha(tiny_model_dir),
            "target": "cpu-vllm-bf16", "engine": "vllm", "dtype": "bf16"}
    with fault_active("batch_noise:0.1:64"):
        with make_engine(parse_target("cpu-vllm-bf16"), tiny_model_dir, settings) as engine:
            # the base decodes each sequence alone, its rows made in the worker
            write_decode_dump(paths["base"], decode_rows(engine, workload, modes["max_tokens"], Storage()), meta,
                              modes["max_tokens"])
        run_mode("cpu-vllm-bf16+batch", tiny_model_dir, prompts, settings, text, modes,
                 {"decode": paths["mode"], "proof": paths["proof"]})
    for name in ("base", "mode"):
        paths[f"{name}_reference"] = tmp_path / f"{name}.reference.safetensors"
        score_decode("cpu-hf-fp32", tiny_model_dir, EngineSettings(threads=1), paths[name],
                     paths[f"{name}_reference"])
    result = compare_mode_files(paths, {}, 0.04, POSITIONS)
    print(result["proof"], result["verdict"], result["vs_base"])
    assert "decode passes held 4 tokens (a step of all 4 sequences)" in result["proof"]
    assert result["alone_vs_batch"]["max_abs_logprob_delta"] > 1e-2
    assert result["base_vs_reference"]["verdict"]["status"] == "pass"
    assert result["status"] == "fail"
    assert [r for r in result["verdict"]["reasons"] if r.startswith("decode: mode vs base: KLD in the mode")]


@pytest.mark.vllm
def test_the_mtp_mode_is_held_to_the_reference_mtp_and_catches_a_drafter_fed_wrong_hidden_states(tiny_model_dir,
                                                                                                  tmp_path):
    """Real mtp runs on vLLM CPU with the embedded model's trained MTP head (two draft tokens). vLLM's own counters
    give drafts per position, acceptance by decode steps (the buckets' drafts add up), the MTP decode time. The
    reference MTP (the mtp.* weights in PyTorch on the hf fp32 reference's hidden states, teacher-forced along the
    run's tokens) reaches the acceptance vLLM's drafter measured: the check passes. With the drafter fed noisy
    hidden states (the fault plugin's mtp_noise) the acceptance falls and the check fails. At which draft position
    depends on the head, which the host trains when it builds the embedded model: measured, mtp_noise:1 took position
    1 from 76.5% to 56.7% on one host, and on an AMX host (its head: 55.2%, 34.3%) position 2 to 21.5% only, where
    mtp_noise:2 took position 2 to 14.3% (the check failed, p = 8.6e-5)."""
    from test_vllm_introspection import fault_active

    from portcheck.modes.mtp_reference import score_mtp
    from portcheck.modes.run import run_mode

    prompts = default_config()["prompts"]["list"][:4]
    modes = {**MODES_CONFIG, "prompts": 4, "max_tokens": 64, "spec_tokens": 2}
    settings = EngineSettings(max_model_len=512, max_num_seqs=4, logprobs_topk=-1,
                              extra={"log_file": str(tmp_path / "engine.log")})
    verdicts = {}
    for fault in (None, "mtp_noise:2"):
        outputs = {"decode": tmp_path / f"{fault}.safetensors", "proof": tmp_path / f"{fault}.json"}
        with fault_active(fault) if fault else contextlib.nullcontext():
            run_mode("cpu-vllm-bf16+mtp", tiny_model_dir, prompts, settings, read_corpus_text(DEFAULT_CORPUS), modes,
                     outputs)
        score_mtp("cpu-hf-fp32", tiny_model_dir, EngineSettings(threads=1), outputs["decode"], tmp_path / "ref.json",
                  spec_tokens=2)
        proof, reference = (json.loads(p.read_text()) for p in (outputs["proof"], tmp_path / "ref.json"))
        print(fault, {k: proof[k] for k in ("proof", "per_position", "acceptance_by_steps", "generate_seconds",
                                            "base_generate_seconds")},
              {k: reference[k] for k in ("drafts", "accepted", "per_position")})
        assert proof["status"] == "ran" and proof["draft_tokens"] == 2 * proof["drafts"] > 0
        assert len(proof["per_position"]) == 2 and proof["generate_seconds"] > 0
        # the speed-up's other side: an engine in the base configuration, started after the MTP engine closed
        assert proof["base_generate_seconds"] == proof["evidence"]["base_timing"]["generate_seconds"] > 0
        assert (tmp_path / "engine.base.log").stat().st_size > 0
        buckets = proof["acceptance_by_steps"]
        assert [b["steps"] for b in buckets] == ["1-16", "17-32", "33-48", "49-64"]
        assert sum(b["drafts"] for b in buckets) > 0 and all(b["drafts"] >= 0 for b in buckets)
        assert proof["engine"]["vllm_kwargs"]["speculative_config"] == {"method": "mtp", "num_speculative_tokens": 2}
        assert reference["status"] == "measured" and reference["draft_tokens"] == 2 * reference["drafts"]
        verdicts[fault] = (proof, reference, acceptance_verdict(
            proof["per_position"], {"golden": None, "tolerance": 0.06}, reference, proof["drafts"]))
    (clean, replayed, verdict), (faulted, faulted_replayed, faulted_verdict) = verdicts[None], verdicts["mtp_noise:2"]
    assert replayed["per_position"][0] > 0.2  # a trained head: an acceptance a port can fall under
    # The replay is vLLM's drafter round for round: the same counts where nothing is wrong.
    assert abs(clean["drafts"] - replayed["drafts"]) <= 2, (clean["drafts"], replayed["drafts"])
    assert all(abs(a - b) < 0.03 for a, b in zip(clean["per_position"], replayed["per_position"]))
    assert not verdict["reasons"] and not verdict["inconclusive"], verdict
    fall = max(golden - rate for rate, golden in zip(faulted["per_position"], faulted_replayed["per_position"]))
    assert fall > 0.1 and faulted_verdict["reasons"], (faulted["per_position"], faulted_verdict)


class CountingHead:
    """A stand-in MTP head that drafts "the token after its input token" (rows carry token ids as values)."""

    def rows(self, hidden, next_ids):
        return next_ids.float().unsqueeze(-1)

    def states(self, x):
        return x

    def drafts(self, states):
        return states[..., 0].long() + 1


def test_vllms_rounds_are_replayed_with_each_draft_decided_by_the_targets_tokens(monkeypatch):
    """Two draft tokens per round on a prompt of 2 and tokens counting up except where they jump (hand-computed).
    Sequence 1 2 | 3 4 5 9 10 11 12 13 20: row 1 (token 3 follows) drafts 4, then 5: both right, next round at row
    4 (token 9 follows: drafts 10, 11, both right), row 7 (drafts 13 right, 14 wrong), then row 9, which has no
    token two ahead: the end. 3 rounds, 6 draft tokens; position 1 right 3 times, position 2 twice."""
    import torch

    from portcheck.model import mtp

    monkeypatch.setattr(mtp, "_main_hidden", lambda model, seq: (torch.zeros(1, len(seq), 1), torch.tensor([seq])))
    counts = mtp.simulate_rounds(None, CountingHead(), [1, 2, 3, 4, 5, 9, 10, 11, 12, 13, 20], 2, 2)
    assert counts == {"num_drafts": 3, "num_draft_tokens": 6, "num_accepted_tokens": 5,
                      "num_accepted_tokens_per_pos": [3, 2]}
    one = mtp.simulate_rounds(None, CountingHead(), [1, 2, 3, 4, 5, 9, 10, 11, 12, 13, 20], 2, 1)
    # rows 1 (4 right), 3 (6 wrong), 4 (10 right), 6 (12 right), 8 (14 wrong)
    assert one == {"num_drafts": 5, "num_draft_tokens": 5, "num_accepted_tokens": 3,
                   "num_accepted_tokens_per_pos": [3]}


def test_the_reference_mtp_refuses_a_head_of_more_layers_than_it_replays():
    from portcheck.model.mtp import build_reference_mtp

    with pytest.raises(PortcheckError, match=r"has layers 0, 1; the reference MTP replays Qwen3.5's single MTP "
                                             r"layer only: remove the \+mtp run or give modes.mtp_acceptance.golden"):
        build_reference_mtp(None, {"layers.0.mlp.up_proj.weight": 0, "layers.1.mlp.up_proj.weight": 0}, None, None)


def test_the_reference_mtp_refuses_a_checkpoint_without_mtp_weights(tmp_path):
    from safetensors.numpy import save_file

    from portcheck.model.mtp import mtp_weights

    save_file({"model.embed_tokens.weight": np.zeros((4, 2), np.float32)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(PortcheckError, match=r"has no mtp.\* weights: no reference MTP acceptance; remove the \+mtp "
                                             r"run"):
        mtp_weights(tmp_path)


def test_the_model_sections_mtp_head_is_not_measured_on_a_checkpoint_without_one(tmp_path):
    """measure_mtp (head_required=False) writes "not measured" with the reason and starts no engine; score_mtp (an
    +mtp run, which needs the head) refuses the same checkpoint."""
    from safetensors.numpy import save_file

    from portcheck.modes.mtp_reference import score_mtp
    from portcheck.report.sections.model import mtp_table

    save_file({"model.embed_tokens.weight": np.zeros((4, 2), np.float32)}, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text("{}")
    decode_dump(tmp_path / "decode.safetensors", [np.zeros((STEPS, VOCAB))], [list(range(1, STEPS + 1))],
                "cpu-hf-fp32")
    args = ("cpu-hf-fp32", tmp_path, EngineSettings(), tmp_path / "decode.safetensors", tmp_path / "head.json", 1)
    score_mtp(*args, head_required=False)
    head = json.loads((tmp_path / "head.json").read_text())
    assert head["status"] == "not measured" and head["reason"].endswith("has no mtp.* weights (no MTP head)")
    assert mtp_table(str(tmp_path / "head.json"))["rows"] == [["MTP head acceptance", "not run", head["reason"]]]
    with pytest.raises(PortcheckError, match=r"no reference MTP acceptance; remove the \+mtp run"):
        score_mtp(*args)


def test_the_model_section_states_the_mtp_heads_acceptance(tmp_path):
    from portcheck.report.sections.model import mtp_table

    path = tmp_path / "mtp_head.json"
    path.write_text(json.dumps({"status": "measured", "reference": "cpu-hf-fp32", "spec_tokens": 2, "drafts": 300,
                                "draft_tokens": 600, "accepted": 240, "acceptance_rate": 0.4,
                                "per_position": [0.55, 0.25], "mean_accepted_length": 1.8}))
    rows = mtp_table(str(path))["rows"]
    assert rows[0][:2] == ["MTP head acceptance rate", "40%"]
    assert rows[0][2].startswith("300 speculative rounds of 2 draft tokens (modes.spec_tokens) replayed along "
                                 "cpu-hf-fp32's greedy decode")
    assert rows[1][1] == "55%, 25%" and rows[2][1] == "1.80"
    assert mtp_table(None) is None


def test_the_report_states_the_mtp_figures_and_what_the_acceptance_check_said():
    from portcheck.report.sections.modes import mtp_tables

    compared = {"cpu-vllm-bf16+mtp": {
        "mode": "mtp", "drafts": 50, "draft_tokens": 100, "accepted": 40, "acceptance_rate": 0.4,
        "per_position": [0.6, 0.2], "mean_accepted_length": 1.8, "draft_tokens_per_accepted": 2.5,
        "reference_acceptance": {"per_position": [0.62, 0.3], "drafts": 48},
        "acceptance_by_steps": [{"steps": "1-64", "acceptance_rate": 0.5, "draft_tokens": 60},
                                {"steps": "65-128", "acceptance_rate": 0.25, "draft_tokens": 40}],
        "vs_base": {"tokens_equal": 3, "sequences": 4, "first_difference": [None, 17, None, None]},
        "workload": {"prompts": 4, "max_tokens": 128}, "generate_seconds": 8.0, "base_generate_seconds": 10.0,
        "verdict": {"reasons": [], "inconclusive": ["acceptance: draft position 1 accepted 60.0%, under ..."]}}}
    tables = mtp_tables(compared, {"runs": {"cpu-vllm-bf16+mtp": "results/m/compare/cpu-vllm-bf16+mtp.mode.json"}})
    row = tables["table"]["rows"][0]
    assert row[1:8] == ["50 (100)", 40, "40%", "60%, 20%", "62%, 30% (48 rounds)", "1.80", "2.50"]
    assert row[8] == "3 of 4 (first differing step 17)" and row[9] == "51.2 → 64.0 (1.25×)"
    assert row[10].startswith("acceptance: draft position 1 accepted 60.0%")
    assert tables["by_steps"]["header"] == ["Run", "steps 1-64", "steps 65-128"]
    assert tables["by_steps"]["rows"] == [["cpu-vllm-bf16+mtp", "50% of 60", "25% of 40"]]
    assert "results/m/compare/cpu-vllm-bf16+mtp.mode.json (drafts" in tables["table"]["source"]
    assert mtp_tables({"x+chunked": {"mode": "chunked"}}, {"runs": {}}) is None


def test_the_reference_mtp_is_not_measured_where_the_reference_runs_vllm(tiny_model_dir, tmp_path):
    """No engine starts; compare_mode then holds the run to modes.mtp_acceptance.golden, or does not judge it."""
    from portcheck.modes.mtp_reference import score_mtp

    decode_dump(tmp_path / "mtp.safetensors", [np.zeros((STEPS, VOCAB))], [list(range(1, STEPS + 1))],
                "cpu-vllm-bf16")
    score_mtp("cpu-vllm-fp32", tiny_model_dir, EngineSettings(), tmp_path / "mtp.safetensors", tmp_path / "ref.json",
              spec_tokens=1)
    reference = json.loads((tmp_path / "ref.json").read_text())
    assert reference["status"] == "not measured" and "the reference cpu-vllm-fp32 runs vllm" in reference["reason"]
    verdict = acceptance_verdict([0.5], {"golden": None}, reference, 100)
    assert "acceptance not judged: the reference MTP runs on" in verdict["inconclusive"][0]
