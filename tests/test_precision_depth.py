"""Precision where ports break (issue 10): long-context corpus windows and decode steps compared by bucket of
positions, the growth and decode-vs-prefill checks, msprobe's three-way settings, the bad inputs, and the proof:
a Gated DeltaNet state fault past the first chunk, and one between decode steps, both pass the seed-prompt check
and each fails the comparison that looks where it acts, with the place named."""

from __future__ import annotations

import math

import numpy as np
import pytest
import yaml

from conftest import ROOT
from portcheck.compare.compare import compare_files
from portcheck.compare.positions import compare_by_position, compare_corpus_files, growth_check
from portcheck.config import DEFAULT_CORPUS, load_schema, read_corpus_text, validate_config
from portcheck.dump.corpus import cut_windows, window_starts
from portcheck.dump.logits_file import RESERVED_META, read_dump, write_dump
from portcheck.engines.layer_hooks import find_decoder_layers
from portcheck.engines.outputs import PromptScores
from portcheck.errors import PortcheckError

SCHEMA = load_schema(ROOT / "config" / "schema.yaml")
THRESHOLDS = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())["compare"]["thresholds"]
POSITIONS = {"bucket": 4, "growth_max": 2.0, "growth_floor": 1e-6}
CHUNKS = {"bucket": 64, "growth_max": 2.0, "growth_floor": 1e-9, "confidence": 0.95}  # the defaults: one GDN chunk per bucket
META = {"model_sha": "m", "tokenizer_sha": "t", "prompts_sha": "corpus"}


def save(tmp_path, name, ids, logits):
    path = tmp_path / f"{name}.safetensors"
    write_dump(path, [PromptScores(i, x) for i, x in zip(ids, logits)], None, {**META, "target": name})
    return read_dump(path)


# ---------------------------------------------------------------- windows


def test_windows_spread_evenly_and_a_short_text_is_refused():
    assert window_starts(100, 10, 4) == [0, 30, 60, 90]  # last window ends at the last token
    assert window_starts(10, 10, 1) == [0]
    assert cut_windows(list(range(20)), 5, 2) == [[0, 1, 2, 3, 4], [15, 16, 17, 18, 19]]
    with pytest.raises(PortcheckError, match="the corpus has 30 tokens; 4 windows of 10 need 40"):
        window_starts(30, 10, 4)


# ---------------------------------------------------------------- statistics, hand-computed


def test_bucket_statistics_by_hand(tmp_path):
    # Vocabulary of 2; the reference always says p = (0.5, 0.5). The target agrees on rows 0-3 and says
    # p = (0.8, 0.2) on rows 4-7: KLD = 0.5 ln(0.5/0.8) + 0.5 ln(0.5/0.2) = 0.22314 there.
    ids = [np.array([0, 1, 0, 1, 0, 1, 0, 1])]
    ref = [np.zeros((8, 2), np.float32)]
    tgt = [np.zeros((8, 2), np.float32)]
    tgt[0][4:, 0] = math.log(0.8 / 0.2)
    result = compare_by_position(save(tmp_path, "cpu-hf-fp32", ids, ref), save(tmp_path, "cpu-hf-bf16", ids, tgt),
                            THRESHOLDS, 0.04, POSITIONS)
    first, second = result["buckets"]
    kld = 0.5 * math.log(0.5 / 0.8) + 0.5 * math.log(0.5 / 0.2)
    assert (first["start"], first["end"], first["n_positions"]) == (0, 3, 4)
    assert first["kld_mean"] == 0 and first["status"] == "pass"
    assert second["kld_mean"] == pytest.approx(kld) and second["kld_p99"] == pytest.approx(kld)
    # The reference's top two tie (0.5 / 0.5): every top-1 choice counts as agreement.
    assert second["top1_agreement_with_ties"] == 1.0
    # Next tokens 1, 0, 1 on rows 4-6 (row 7 has none): target p = 0.2, 0.8, 0.2 vs reference 0.5.
    assert second["ppl_ref"] == pytest.approx(2.0)
    assert second["ppl_target"] == pytest.approx(math.exp(-(2 * math.log(0.2) + math.log(0.8)) / 3))
    # The bucket localises ("over"); the verdict rests on all positions pooled (mean KLD 0.11 > 0.005) and growth.
    assert second["status"] == "fail" and any("kld_mean" in r for r in second["reasons"])
    assert result["overall"]["kld_mean"] == pytest.approx(kld / 2) and result["pooled"]["status"] == "fail"
    # One window is one unit: growth has no error estimate, so it is inconclusive, naming the setting.
    assert result["growth"]["first_bucket_exact"] and result["growth"]["status"] == "inconclusive"
    assert "corpus.windows" in result["growth"]["reason"]
    assert result["verdict"]["status"] == "fail"
    assert any(r.startswith("all positions: kld_mean_max") for r in result["verdict"]["reasons"])
    assert not any("positions 4-7" in r for r in result["verdict"]["reasons"])
    assert result["kld_by_position"][5] == [5, pytest.approx(kld)]


def test_long_context_plot_is_drawn_and_reproducible(tmp_path):
    from portcheck.atomic import write_json
    from portcheck.report.plots import plot_kld_long_context

    ids = [np.arange(8) % 2] * 2
    ref = [np.zeros((8, 2), np.float32)] * 2
    tgt = [np.zeros((8, 2), np.float32), np.ones((8, 2), np.float32) * [[1.0, 0.0]]]
    result = compare_by_position(save(tmp_path, "cpu-hf-fp32", ids, ref), save(tmp_path, "cpu-hf-bf16", ids, tgt),
                            THRESHOLDS, 0.04, POSITIONS)
    write_json(tmp_path / "c.json", result)
    first, second = tmp_path / "a.png", tmp_path / "b.png"
    plot_kld_long_context({"cpu-hf-bf16": tmp_path / "c.json"}, first)
    plot_kld_long_context({"cpu-hf-bf16": tmp_path / "c.json"}, second)
    assert first.stat().st_size > 1000 and first.read_bytes() == second.read_bytes()


def test_score_from_leaves_the_first_rows_out_of_the_thresholds_not_of_growth(tmp_path):
    ids = [np.arange(8) % 2] * 2
    ref, tgt = [np.zeros((8, 2), np.float32)] * 2, [np.zeros((8, 2), np.float32) for _ in range(2)]
    for logits in tgt:
        logits[4:, 0] = 0.01  # a tiny, even error past the first bucket
    result = compare_by_position(save(tmp_path, "cpu-hf-fp32", ids, ref), save(tmp_path, "cpu-hf-bf16", ids, tgt),
                                 THRESHOLDS, 0.04, POSITIONS, score_from=6)
    assert [b["start"] for b in result["buckets"]] == [4]
    assert result["overall"]["n_positions"] == 4
    # Growth keeps its baseline on the full first bucket (rows 0-3, exact here) and says why, naming the setting.
    assert result["growth"]["first_bucket"] == "0-3" and result["growth"]["kld_first"] == 0
    assert "corpus.score_from 6" in result["growth"]["note"]


def units(*sequences):
    """The flat position arrays of compare_by_position from per-sequence KLD lists."""
    return {"sequence": np.concatenate([np.full(len(s), i) for i, s in enumerate(sequences)]),
            "position": np.concatenate([np.arange(len(s)) for s in sequences]),
            "kld": np.concatenate([np.asarray(s, dtype=float) for s in sequences])}


def test_growth_check_takes_sequences_as_units_and_the_floor():
    settings = {"growth_max": 2.0, "growth_floor": 1e-6, "confidence": 0.95}
    # Uniform noise in three windows: ratio 1, bounds within 2x: pass.
    flat = [[1e-4, 2e-4, 1e-4, 2e-4] * 2, [2e-4, 1e-4, 2e-4, 1e-4] * 2, [1e-4] * 8]
    assert growth_check(units(*flat), 4, settings, "exact")["status"] == "pass"
    # Ratio 3 in every window: fails, naming the worst bucket.
    grown = growth_check(units(*[[1e-4] * 4 + [3e-4, 3.1e-4, 2.9e-4, 3e-4]] * 3), 4, settings, "exact")
    assert grown["status"] == "fail" and "positions 4-7" in grown["reason"] and grown["ratio"] == pytest.approx(3, 0.01)
    # Ratio 3 on average but 0.3x in one window and 30x in the other: the bounds straddle 2x: inconclusive.
    noisy = growth_check(units([1e-4] * 4 + [3e-5] * 4, [1e-4] * 4 + [3e-3] * 4), 4, settings, "exact")
    assert noisy["ratio"] == pytest.approx(3.0) and noisy["status"] == "inconclusive"
    # fp32 rounding noise past an exact first bucket: below the floor: pass.
    assert growth_check(units([0] * 4 + [1e-10] * 4, [0] * 8), 4, settings, "exact")["status"] == "pass"
    # An exact first bucket and a real error past it: the floor stands in for 0 in the logs, a large ratio: fail.
    fault = growth_check(units([0] * 4 + [1e-4, 2e-4] * 2, [0] * 4 + [2e-4, 1e-4] * 2), 4, settings, "exact")
    assert fault["first_bucket_exact"] and fault["status"] == "fail" and fault["ratio"] > 100
    assert growth_check(units([0] * 4, [0] * 4), 4, settings, "exact")["status"] == "inconclusive"
    # Lower bounds never pass.
    assert growth_check(units(*flat), 4, settings, "lower bound")["status"] == "inconclusive"


# ---------------------------------------------------------------- bad input


def config_with(**corpus) -> dict:
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    config["corpus"].update(corpus)
    return config


def problems(config, base_dir=ROOT) -> str:
    with pytest.raises(PortcheckError) as excinfo:
        validate_config(config, SCHEMA, base_dir)
    return str(excinfo.value)


def test_corpus_file_missing_empty_or_not_utf8(tmp_path):
    assert "corpus file" in problems(config_with(file="nowhere.txt"), tmp_path)
    assert "does not exist" in problems(config_with(file="nowhere.txt"), tmp_path)
    (tmp_path / "empty.txt").write_text(" \n\n")
    assert "is empty" in problems(config_with(file="empty.txt"), tmp_path)
    (tmp_path / "latin1.txt").write_bytes("café crème".encode("latin-1"))
    message = problems(config_with(file="latin1.txt"), tmp_path)
    assert "is not UTF-8" in message and "iconv" in message
    assert read_corpus_text(DEFAULT_CORPUS).strip()


def test_window_longer_than_a_targets_context_is_refused_naming_both():
    message = problems(config_with(window_length=600))
    assert "corpus windows of 600 tokens do not fit target cpu-vllm-bf16" in message
    assert "max_model_len 512" in message and "corpus.window_length <= 511" in message
    assert "leaves nothing to score" in problems(config_with(score_from=511))
    # Disabled: neither the text nor the windows are checked.
    validate_config(config_with(enabled=False, window_length=600, file="nowhere.txt"), SCHEMA, ROOT)


@pytest.mark.parametrize("key, value", [("growth_max", 1.0), ("growth_max", "two"), ("growth_floor", 0),
                                        ("confidence", 0.5), ("confidence", 1.0), ("confidence", "high"),
                                        ("bucket", 0)])
def test_ratio_check_settings_out_of_range_are_refused_naming_them(key, value):
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    config["compare"]["positions"][key] = value
    assert f"compare.positions.{key}" in problems(config)


def test_three_way_names_must_be_enabled_targets():
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    config["compare"]["three_way"] = {"candidate": "npu-vllm-bf16", "benchmark": "cpu-hf-fp32"}
    message = problems(config)
    assert "compare.three_way.candidate is 'npu-vllm-bf16', which is not an enabled target" in message
    assert "compare.three_way.benchmark is 'cpu-hf-fp32'" in message


def test_whitespace_only_prompt_is_refused_not_dropped():
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    config["prompts"]["list"] = ["The capital of France is", "   ", ""]
    message = problems(config)
    assert "prompts.list entries 1, 2 are empty or whitespace only" in message


def test_window_too_long_for_the_engine_is_refused_before_it_starts(tiny_model_dir, tmp_path, monkeypatch):
    from portcheck.dump import run
    from portcheck.engines.settings import EngineSettings

    monkeypatch.setattr(run, "make_engine", lambda *a: pytest.fail("the engine must not start"))
    corpus = {"text": read_corpus_text(DEFAULT_CORPUS), "path": "x", "sha256": "s", "window_length": 200,
              "windows": 2}
    with pytest.raises(PortcheckError, match=r"corpus window 0.*200 tokens.*max_model_len 128"):
        run.run_target("cpu-hf-fp32", tiny_model_dir, ["a"], EngineSettings(max_model_len=128), {},
                       greedy_tokens=1, corpus=corpus)


def test_topk_wider_than_the_vocabulary_is_refused_before_the_engine_starts(tiny_model_dir, monkeypatch):
    from portcheck.dump import run
    from portcheck.engines.settings import EngineSettings

    monkeypatch.setattr(run, "make_engine", lambda *a: pytest.fail("the engine must not start"))
    with pytest.raises(PortcheckError, match=r"targets.cpu-vllm-bf16.logprobs_topk is 5000 but the vocabulary has"):
        run.run_target("cpu-vllm-bf16", tiny_model_dir, ["a"], EngineSettings(logprobs_topk=5000), {},
                       greedy_tokens=1)


# ---------------------------------------------------------------- the proof: a fault past the first chunk


def drop_state_at_chunk_boundaries(original):
    """A Gated DeltaNet prefill that forgets its recurrent state at every 64-token chunk boundary: the first chunk
    is exact, every later chunk starts from zero (a wrong state hand-over, as a port's kernel could have)."""
    import torch

    def chunked(query, key, value, g, beta, chunk_size=64, initial_state=None, output_final_state=False, **kwargs):
        outputs, state = [], initial_state
        for start in range(0, query.shape[1], chunk_size):
            part = slice(start, start + chunk_size)
            out, final = original(query[:, part], key[:, part], value[:, part], g[:, part], beta[:, part],
                                  chunk_size=chunk_size, initial_state=state if start == 0 else None,
                                  output_final_state=True, **kwargs)
            outputs.append(out)
            state = final
        return torch.cat(outputs, dim=1), state if output_final_state else None

    return chunked


def drop_state_between_decode_steps(original):
    """A Gated DeltaNet decode step that starts from a zero state instead of the cached one (a state not written
    back or not read in a decode kernel, as in graph replay): prefill is untouched."""
    def step(query, key, value, g, beta, initial_state=None, output_final_state=False, **kwargs):
        state = None if initial_state is None else initial_state * 0
        return original(query, key, value, g, beta, initial_state=state, output_final_state=output_final_state,
                        **kwargs)

    return step


@pytest.fixture(scope="module")
def faulty_runs(tiny_model_dir, tmp_path_factory):
    """Dumps made by the real dump code (run_target on the hf engine) with the seed prompts, the shipped corpus and
    the decode path: the reference, a target whose GDN prefill drops its state at chunk boundaries, and one whose
    decode steps drop it. Each target's decode tokens are scored by the reference's engine (score_decode)."""
    import transformers.models.qwen3_5.modeling_qwen3_5 as qwen3_5

    from portcheck.dump.decode_reference import score_decode
    from portcheck.dump.run import run_target
    from portcheck.engines.settings import EngineSettings
    from portcheck.hashing import sha256_text

    out = tmp_path_factory.mktemp("faulty")
    prompts = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())["prompts"]["list"]
    text = read_corpus_text(DEFAULT_CORPUS)
    corpus = {"text": text, "path": DEFAULT_CORPUS.name, "sha256": sha256_text(text), "window_length": 300,
              "windows": 2}
    faults = {"reference": None,
              "chunk_fault": ("torch_chunk_gated_delta_rule", drop_state_at_chunk_boundaries),
              "decode_fault": ("torch_recurrent_gated_delta_rule", drop_state_between_decode_steps),
              "bf16": None}
    runs = {}
    for name, fault in faults.items():
        paths = {kind: out / name / f"{kind}.{'json' if kind == 'adaptation' else 'safetensors'}"
                 for kind in ("logits", "adaptation", "corpus", "decode")}
        paths["logits"].parent.mkdir()
        function = fault and getattr(qwen3_5, fault[0])
        if fault:
            setattr(qwen3_5, fault[0], fault[1](function))
        try:
            run_target("cpu-hf-bf16" if name == "bf16" else "cpu-hf-fp32", tiny_model_dir, prompts,
                       EngineSettings(threads=1), paths, greedy_tokens=2, corpus=corpus,
                       decode={"prompts": 3, "max_tokens": 128})
        finally:
            if fault:
                setattr(qwen3_5, fault[0], function)
        paths["decode_reference"] = out / name / "decode_reference.safetensors"
        score_decode("cpu-hf-fp32", tiny_model_dir, EngineSettings(threads=1), paths["decode"],
                     paths["decode_reference"])
        if name == "bf16":  # the bf16 floor's scores of its own decoded tokens (rule score_decode_floor)
            paths["decode_floor"] = out / name / "decode_floor.safetensors"
            score_decode("cpu-hf-bf16", tiny_model_dir, EngineSettings(threads=1), paths["decode"],
                         paths["decode_floor"])
        runs[name] = paths
    return runs


def compare_all(runs, name, tmp_path):
    """The seed-prompt, long-context and decode-path comparisons of one run against the reference."""
    from portcheck.atomic import write_json
    from portcheck.compare.positions import compare_decode_files

    reference, target = runs["reference"], runs[name]
    seed = compare_files(reference["logits"], target["logits"], THRESHOLDS, 0.04)
    corpus = compare_corpus_files(reference["corpus"], target["corpus"], THRESHOLDS, 0.04, CHUNKS)
    write_json(tmp_path / "corpus.json", corpus)
    decode = compare_decode_files(target["decode_reference"], target["decode"], THRESHOLDS, 0.04, CHUNKS,
                                  tmp_path / "corpus.json")
    return seed, corpus, decode


def test_state_fault_past_the_first_chunk_passes_the_seed_check_and_fails_long_context(faulty_runs, tmp_path):
    seed, result, _ = compare_all(faulty_runs, "chunk_fault", tmp_path)
    assert seed["verdict"]["status"] == "pass" and seed["kld_mean"] == 0  # the prompts never leave chunk 1
    first = result["buckets"][0]
    assert (first["start"], first["kld_mean"]) == (0, 0)  # the first chunk is exact
    assert all(b["kld_mean"] > 1e-6 for b in result["buckets"][1:])
    assert result["verdict"]["status"] == "fail"
    assert result["growth"]["status"] == "fail" and result["growth"]["first_bucket_exact"]
    assert any(r.startswith("growth:") and "positions" in r for r in result["verdict"]["reasons"])


def test_decode_state_fault_passes_both_prefill_checks_and_fails_the_decode_path(faulty_runs, tmp_path):
    seed, corpus, decode = compare_all(faulty_runs, "decode_fault", tmp_path)
    assert seed["verdict"]["status"] == "pass" and corpus["verdict"]["status"] == "pass"
    assert corpus["overall"]["kld_mean"] == 0  # prefill never runs the decode kernel
    assert decode["overall"]["kld_mean"] > 1e-5
    assert decode["decode_vs_prefill"]["status"] == "fail" and decode["decode_vs_prefill"]["base_exact"]
    assert decode["verdict"]["status"] == "fail"
    assert any(r.startswith("decode vs prefill: KLD over the decode steps") for r in decode["verdict"]["reasons"])


# ---------------------------------------------------------------- faults on top of the bf16 floor


def amplified(reference: str, target: str, factor: float, from_row: int, out) -> str:
    """The target's dump with its logit error against the reference scaled by `factor` from row `from_row` on
    (KLD grows ~factor^2 there): an error that grows past the first chunk, on top of a real bf16 noise floor."""
    ref, tgt = read_dump(reference), read_dump(target)
    scores = []
    for i in range(tgt.num_prompts):
        a, b = np.asarray(ref.logits[i], np.float64), np.asarray(tgt.logits[i], np.float64)
        b[from_row:] = a[from_row:] + factor * (b[from_row:] - a[from_row:])
        scores.append(PromptScores(np.asarray(tgt.input_ids[i]), b.astype(np.float32)))
    write_dump(out, scores, None, {k: v for k, v in tgt.meta.items() if k not in RESERVED_META})
    return out


def test_growth_catches_an_error_growing_past_the_first_chunk_on_a_bf16_floor(faulty_runs, tmp_path):
    """cpu-hf-bf16 against the fp32 reference: the real bf16 floor passes every check; its error doubled past the
    first chunk (KLD ~4x there) fails growth, while every pooled threshold still passes (KLD ~1e-4 << 5e-3)."""
    runs = faulty_runs
    clean = compare_corpus_files(runs["reference"]["corpus"], runs["bf16"]["corpus"], THRESHOLDS, 0.04, CHUNKS)
    assert clean["kld_basis"] == "exact" and 1e-6 < clean["overall"]["kld_mean"] < 1e-3
    assert clean["growth"]["status"] == "pass" and clean["verdict"]["status"] == "pass"
    grown = amplified(runs["reference"]["corpus"], runs["bf16"]["corpus"], 2.0, 64, tmp_path / "grown.safetensors")
    result = compare_corpus_files(runs["reference"]["corpus"], grown, THRESHOLDS, 0.04, CHUNKS)
    assert result["pooled"]["status"] == "pass" and result["overall"]["kld_mean"] < 5e-3
    assert result["growth"]["status"] == "fail" and result["growth"]["ratio"] > 3
    assert result["verdict"]["status"] == "fail"


def test_decode_vs_prefill_catches_a_decode_only_error_on_a_bf16_floor(faulty_runs, tmp_path):
    """The bf16 decode path against its teacher-forced reference: clean, it decodes as precisely as it prefills;
    with its decode error multiplied by 6 (KLD ~36x), decode vs prefill fails while the decode's own growth does not
    move. (The shipped model's clean decode is a quarter of its prefill's KLD: tripled, it read 2.29x the prefill's,
    bounds 1.01x-5.19x over 3 and 2 sequences, inconclusive.)"""
    from portcheck.atomic import write_json
    from portcheck.compare.positions import compare_decode_files

    runs = faulty_runs
    corpus = compare_corpus_files(runs["reference"]["corpus"], runs["bf16"]["corpus"], THRESHOLDS, 0.04, CHUNKS)
    write_json(tmp_path / "corpus.json", corpus)
    decode = runs["bf16"]
    clean = compare_decode_files(decode["decode_reference"], decode["decode"], THRESHOLDS, 0.04, CHUNKS,
                                 tmp_path / "corpus.json")
    # Nothing fails clean; the decode's growth over 3 sequences may be too few units to decide (1.11x, bounds
    # 0.41x-3.04x on the shipped model).
    assert clean["decode_vs_prefill"]["status"] == "pass" and not clean["verdict"]["reasons"], clean["verdict"]
    worse = amplified(decode["decode_reference"], decode["decode"], 6.0, 0, tmp_path / "worse.safetensors")
    result = compare_decode_files(decode["decode_reference"], worse, THRESHOLDS, 0.04, CHUNKS,
                                  tmp_path / "corpus.json")
    print(result["decode_vs_prefill"]["reason"])
    assert result["decode_vs_prefill"]["status"] == "fail" and result["decode_vs_prefill"]["ratio"] > 3
    assert result["growth"]["status"] != "fail" and result["verdict"]["status"] == "fail"


def test_decode_vs_floor_catches_a_decode_error_a_few_times_the_bf16_floor(faulty_runs, tmp_path):
    """The bf16 decode path against the bf16 floor's teacher-forced scores of the same tokens (paired by decode
    prompt): clean, about 1x, passes; its error doubled (KLD ~4x, far under every pooled threshold) fails; without a
    floor the check is not run and says why."""
    from portcheck.atomic import write_json
    from portcheck.compare.positions import compare_decode_files

    runs = faulty_runs
    corpus = compare_corpus_files(runs["reference"]["corpus"], runs["bf16"]["corpus"], THRESHOLDS, 0.04, CHUNKS)
    write_json(tmp_path / "corpus.json", corpus)
    decode, positions = runs["bf16"], {**CHUNKS, "floor_max": 2.0}

    def compared(target, **floor):
        return compare_decode_files(decode["decode_reference"], target, THRESHOLDS, 0.04, positions,
                                    tmp_path / "corpus.json", **floor)

    clean = compared(decode["decode"], floor_path=decode["decode_floor"])
    print("clean", clean["vs_floor"]["reason"])
    assert clean["vs_floor"]["status"] == "pass" and clean["vs_floor"]["units"] == {"compared": 3, "base": 3}
    assert clean["verdict"]["status"] != "fail" and not clean["verdict"]["reasons"], clean["verdict"]
    worse = amplified(decode["decode_reference"], decode["decode"], 2.0, 0, tmp_path / "worse.safetensors")
    result = compared(worse, floor_path=decode["decode_floor"])
    print("doubled", result["vs_floor"]["reason"])
    assert result["pooled"]["status"] == "pass" and result["overall"]["kld_mean"] < 5e-3
    assert result["vs_floor"]["status"] == "fail" and result["vs_floor"]["ratio_lower"] > 2.0
    assert any(r.startswith("vs bf16 floor: KLD of the target is") for r in result["verdict"]["reasons"])
    alone = compared(worse, no_floor="no floor: cpu-hf-bf16 is disabled")
    assert alone["vs_floor"] == {"status": "not run", "reason": "no floor: cpu-hf-bf16 is disabled"}
    assert "vs bf16 floor" not in " ".join(alone["verdict"]["reasons"] + alone["verdict"]["inconclusive"])


def test_mode_vs_base_catches_a_worse_mode_on_a_bf16_floor(faulty_runs, tmp_path):
    """A mode run whose decode error is doubled against the same target's base configuration (bf16, clean):
    the paired ratio over the prompts fails; the base against itself passes."""
    from portcheck.modes.compare import mode_vs_base

    decode = faulty_runs["bf16"]
    base = compare_by_position(read_dump(decode["decode_reference"]), read_dump(decode["decode"]), THRESHOLDS, 0.04,
                               CHUNKS)
    assert mode_vs_base(base, base, CHUNKS)["status"] == "pass"
    worse = amplified(decode["decode_reference"], decode["decode"], 2.0, 0, tmp_path / "mode.safetensors")
    mode = compare_by_position(read_dump(decode["decode_reference"]), read_dump(worse), THRESHOLDS, 0.04, CHUNKS)
    result = mode_vs_base(mode, base, CHUNKS)
    assert result["status"] == "fail" and result["paired"] and result["units"]["compared"] == 3


def test_same_engine_without_a_fault_passes_every_check(faulty_runs, tmp_path):
    seed, corpus, decode = compare_all(faulty_runs, "reference", tmp_path)
    assert seed["verdict"]["status"] == corpus["verdict"]["status"] == decode["verdict"]["status"] == "pass"
    assert corpus["overall"]["kld_mean"] == 0
    # fp32 decode against fp32 teacher-forced prefill: rounding only, under the growth floor.
    assert decode["overall"]["kld_mean"] < 1e-9 and decode["decode"]["steps"] == 128
    assert decode["overall"]["n_positions"] == 3 * 128


# ---------------------------------------------------------------- where it diverges (issue 11, hf engine)


def layer_run(tiny_model_dir, out, monkeypatch, target="cpu-hf-fp32", after_load=None):
    """The prompts' per-layer states from run_target on the hf engine; after_load(model) changes the loaded model
    (a fault, another attention implementation) before anything runs."""
    from portcheck.dump.run import run_target
    from portcheck.engines import hf
    from portcheck.engines.settings import EngineSettings

    if after_load is not None:
        original = hf.HFEngine.__init__

        def changed_init(self, *args, **kwargs):
            original(self, *args, **kwargs)
            after_load(self.model)

        monkeypatch.setattr(hf.HFEngine, "__init__", changed_init)
    out.mkdir()
    paths = {"logits": out / "logits.safetensors", "adaptation": out / "adaptation.json",
             "layers": out / "layers.safetensors"}
    prompts = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())["prompts"]["list"]
    run_target(target, tiny_model_dir, prompts, EngineSettings(threads=1), paths, greedy_tokens=1,
               layers={"windows": 0})
    monkeypatch.undo()
    return paths["layers"]


def noise_in_layer(layer: int, scale: float):
    """That decoder layer's output gets Gaussian noise (scale x its own standard deviation, in its own dtype), as
    a broken kernel in one layer would."""
    import torch

    def add_noise(_module, _inputs, output):
        hidden = output[0] if isinstance(output, tuple) else output
        noise = torch.randn(hidden.shape, generator=torch.Generator().manual_seed(0)) * hidden.float().std() * scale
        noisy = hidden + noise.to(hidden.dtype)
        return (noisy, *output[1:]) if isinstance(output, tuple) else noisy

    return lambda model: find_decoder_layers(model, None)[0][layer].register_forward_hook(add_noise)


def test_a_fault_in_one_layer_is_named_as_the_first_divergent(tiny_model_dir, tmp_path, monkeypatch):
    from portcheck.compare.layers import compare_layers_files

    settings = {"cosine_min": 0.99, "rel_l2_max": 0.05}
    reference = layer_run(tiny_model_dir, tmp_path / "reference", monkeypatch)
    faulty = layer_run(tiny_model_dir, tmp_path / "faulty", monkeypatch, after_load=noise_in_layer(5, 0.2))
    result = compare_layers_files(reference, faulty, settings)
    assert result["first_divergent"] == {"index": 5, "name": "layer 5", "type": "Gated DeltaNet"}
    assert [row["rel_l2_mean"] for row in result["layers"][:5]] == [0, 0, 0, 0, 0]  # exact before the fault
    assert result["finding"].startswith("first over the thresholds: layer 5 (Gated DeltaNet)")
    assert result["error_growth_by_type"]["Gated DeltaNet"] == 1.0
    # The noise is added to layer 5's output: the states of layers 0-5 are computed before it, layer 6's after.
    states = {row["index"]: row for row in result["gdn_states"]["layers"]}
    assert result["gdn_states"]["state_dtype"] == {"reference": "float32", "target": "float32"}
    assert [states[i]["rel_l2_max"] for i in (0, 1, 2, 4, 5)] == [0, 0, 0, 0, 0] and states[6]["rel_l2_max"] > 0.05
    assert result["gdn_states"]["first_divergent"] == "layer 6"
    assert result["gdn_states"]["sequences"] == 1  # layers.state_sequences: the last sequence's states only
    clean = compare_layers_files(reference, reference, settings)
    assert clean["first_divergent"] is None and clean["finding"].startswith("no layer is over the thresholds")
    # no floor given: the multiples are unknown, never a pass
    assert clean["floor"]["status"] == "unknown" and "against the bf16 floor: unknown" in clean["finding"]


def test_an_engine_that_cannot_capture_layers_says_why(tmp_path):
    from portcheck.compare.layers import compare_layers_files
    from portcheck.dump.layers_file import write_layers
    from portcheck.engines.outputs import LayerStates

    meta = {"model_sha": "m", "sequences_sha": "s"}
    write_layers(tmp_path / "ref.safetensors", LayerStates([np.ones((3, 4, 2), np.float32)], indices=[0, 1]),
                 {**meta, "target": "cpu-hf-fp32"})
    write_layers(tmp_path / "vllm.safetensors", LayerStates(None, status="not determined",
                                                            reason="no decoder layer list found in X"),
                 {**meta, "target": "cpu-vllm-bf16"})
    result = compare_layers_files(tmp_path / "ref.safetensors", tmp_path / "vllm.safetensors",
                                  {"cosine_min": 0.99, "rel_l2_max": 0.05})
    assert result["status"] == "not determined" and "cpu-vllm-bf16: no decoder layer list found" in result["reason"]

def test_a_layer_index_outside_the_model_is_refused_before_the_engine_starts(tiny_model_dir, tmp_path, monkeypatch):
    from portcheck.dump import run
    from portcheck.engines.settings import EngineSettings

    def no_engine(*_args, **_kwargs):
        raise AssertionError("the engine must not start")

    monkeypatch.setattr(run, "make_engine", no_engine)
    paths = {"logits": tmp_path / "logits.safetensors", "adaptation": tmp_path / "adaptation.json",
             "layers": tmp_path / "layers.safetensors"}
    with pytest.raises(PortcheckError) as error:
        run.run_target("cpu-hf-fp32", tiny_model_dir, ["Hello"], EngineSettings(threads=1), paths,
                       layers={"windows": 0, "indices": [2, 8, 40]})
    assert "layers.indices [8, 40] outside the model" in str(error.value)
    assert "8 decoder layers (0-7)" in str(error.value) and "null for every layer" in str(error.value)
    assert not any(path.exists() for path in paths.values())


def test_a_model_whose_decoder_layers_are_not_found_is_not_determined(tiny_model_dir):
    from portcheck.engines.factory import make_engine
    from portcheck.engines.settings import EngineSettings
    from portcheck.targets import parse_target

    with make_engine(parse_target("cpu-hf-fp32"), tiny_model_dir, EngineSettings(threads=1)) as engine:
        decoder = engine.model.model
        decoder.blocks = decoder.layers  # laid out otherwise: no `layers` beside the final norm
        del decoder.layers
        captured = engine.layer_states([[1, 2, 3]])
    assert captured.hidden is None and captured.status == "not determined"
    assert captured.reason == "no decoder layer list and final norm found in Qwen3_5ForCausalLM"


def test_selected_layers_are_captured_and_named(tiny_model_dir):
    from portcheck.engines.factory import make_engine
    from portcheck.engines.settings import EngineSettings
    from portcheck.targets import parse_target

    with make_engine(parse_target("cpu-hf-fp32"), tiny_model_dir, EngineSettings(threads=1)) as engine:
        captured = engine.layer_states([list(range(5, 25))], indices=[6, 1, 3])
    assert captured.indices == [1, 3, 6] and captured.hidden[0].shape[:2] == (3 + 1, 20)
    assert captured.gdn_layers == [1, 6] and captured.gdn_states[0].shape == (2, 2, 64, 64)


def as_compact(path, out):
    """A whole-row dump rewritten as compact records (the storage Qwen3.5's real vocabulary gets by default)."""
    from portcheck.dump.compact import Storage
    from portcheck.engines.outputs import Generation

    dump = read_dump(path)
    rows = [PromptScores(dump.input_ids[i], dump.logits[i]) for i in range(dump.num_prompts)]
    greedy = [Generation(list(g)) for g in dump.greedy_ids] if dump.greedy_ids is not None else None
    meta = {k: v for k, v in dump.meta.items() if k not in ("format", "format_version", "kind", "num_prompts",
                                                            "json_keys")}
    write_dump(out, rows, greedy, meta, Storage(compact=True, topk=128, sample=128))
    return out


def test_the_faults_are_caught_from_compact_dumps_too(faulty_runs, tmp_path):
    """The chunk-boundary and decode-state faults, with both sides stored compact: the same checks fail, the KLD
    is an estimate, and the fault-free run passes."""
    from portcheck.atomic import write_json
    from portcheck.compare.positions import compare_decode_files

    compact = {name: {kind: as_compact(path, tmp_path / f"{name}.{kind}.safetensors") for kind, path in paths.items()
                      if kind in ("corpus", "decode", "decode_reference")}
               for name, paths in faulty_runs.items()}
    chunk = compare_corpus_files(compact["reference"]["corpus"], compact["chunk_fault"]["corpus"], THRESHOLDS, 0.04,
                                 CHUNKS)
    assert chunk["kld_basis"] == "estimate" and chunk["buckets"][0]["kld_mean"] == 0
    assert chunk["growth"]["status"] == "fail" and chunk["verdict"]["status"] == "fail"
    exact = compare_corpus_files(faulty_runs["reference"]["corpus"], faulty_runs["chunk_fault"]["corpus"], THRESHOLDS,
                                 0.04, CHUNKS)
    assert chunk["overall"]["kld_mean"] == pytest.approx(exact["overall"]["kld_mean"], rel=0.05)
    clean = compare_corpus_files(compact["reference"]["corpus"], compact["reference"]["corpus"], THRESHOLDS, 0.04,
                                 CHUNKS)
    write_json(tmp_path / "corpus.json", clean)
    assert clean["verdict"]["status"] == "pass"
    decode = compare_decode_files(compact["decode_fault"]["decode_reference"], compact["decode_fault"]["decode"],
                                  THRESHOLDS, 0.04, CHUNKS, tmp_path / "corpus.json")
    assert decode["kld_basis"] == "estimate" and decode["decode_vs_prefill"]["status"] == "fail"


def test_the_floor_check_catches_an_error_a_few_times_the_bf16_floor_under_every_threshold(faulty_runs, tmp_path):
    """The target against the bf16 floor on the same windows (paired by window): the floor's own error scaled by 1.1
    (KLD ~1.2x) passes; doubled everywhere (KLD ~4x, growth flat, far under kld_mean_max) fails; without a floor the
    check is not run and says why."""
    runs = faulty_runs
    reference, floor = runs["reference"]["corpus"], runs["bf16"]["corpus"]
    positions = {**CHUNKS, "floor_max": 2.0}
    near = amplified(reference, floor, 1.1, 0, tmp_path / "near.safetensors")
    result = compare_corpus_files(reference, near, THRESHOLDS, 0.04, positions, floor_path=floor)
    assert result["vs_floor"]["status"] == "pass" and 1.1 < result["vs_floor"]["ratio"] < 1.4
    assert result["verdict"]["status"] == "pass"
    doubled = amplified(reference, floor, 2.0, 0, tmp_path / "doubled.safetensors")
    result = compare_corpus_files(reference, doubled, THRESHOLDS, 0.04, positions, floor_path=floor)
    assert result["pooled"]["status"] == "pass" and result["growth"]["status"] == "pass"
    assert result["vs_floor"]["status"] == "fail" and result["vs_floor"]["ratio_lower"] > 2.0
    assert result["verdict"]["status"] == "fail"
    assert any(r.startswith("vs bf16 floor: KLD of the target is") for r in result["verdict"]["reasons"])
    alone = compare_corpus_files(reference, doubled, THRESHOLDS, 0.04, positions, no_floor="no floor: disabled")
    assert alone["vs_floor"] == {"status": "not run", "reason": "no floor: disabled"}
    assert alone["verdict"]["status"] == "pass"


def test_hf_decode_in_batches_gives_each_prompt_alone_s_tokens_and_rows(tiny_model_dir, monkeypatch):
    """The hf engine decodes the prompts left-padded together: the same greedy tokens as each prompt alone and the
    same step rows to fp32 rounding (the batch's matrix products round apart, 1e-5 measured), in prompt order;
    batches of one (DECODE_ROWS_BYTES too small for two) are each prompt alone, bit for bit."""
    from portcheck.engines import hf
    from portcheck.engines.factory import make_engine
    from portcheck.engines.settings import EngineSettings
    from portcheck.targets import parse_target

    prompts = [[11, 12, 13, 14, 15, 16, 17], [40, 41, 42], [7, 8, 9, 10, 11]]
    with make_engine(parse_target("cpu-hf-fp32"), tiny_model_dir, EngineSettings(threads=1)) as engine:
        batches, generate_steps = [], engine._generate_steps
        monkeypatch.setattr(engine, "_generate_steps", lambda batch, *a: batches.append(len(batch)) or
                            generate_steps(batch, *a))
        together = engine.decode(prompts, 24)
        assert batches == [3] and engine.decode_batches == [3]
        alone = [engine.decode([ids], 24)[0] for ids in prompts]
        monkeypatch.setattr(hf, "DECODE_ROWS_BYTES", 1)
        one_by_one = engine.decode(prompts, 24)
        assert batches[-3:] == [1, 1, 1] and engine.decode_batches == [1, 1, 1]
        vocab = engine._vocab_size()
    for batched, single, ids in zip(together, alone, prompts):
        assert batched.prompt == ids and batched.tokens == single.tokens
        assert batched.scores.logits.shape == single.scores.logits.shape == (24, vocab)
        np.testing.assert_allclose(batched.scores.logits, single.scores.logits, rtol=0, atol=1e-4)
        assert list(batched.scores.input_ids) == list(single.scores.input_ids)
    for first, second in zip(one_by_one, alone):
        assert first.tokens == second.tokens and np.array_equal(first.scores.logits, second.scores.logits)


@pytest.mark.parametrize("batched, batches", [(True, [3]), (False, [1, 1, 1])])
def test_decode_batched_false_decodes_each_prompt_alone(tiny_model_dir, tmp_path, batched, batches):
    """The config's decode.batched reaches the engine, and the decode dump says how its prompts were decoded."""
    from conftest import default_config
    from portcheck.dump.logits_file import read_dump
    from portcheck.dump.run import run_target
    from portcheck.engines.settings import EngineSettings

    config = default_config()
    del config["decode"]["batched"]
    assert validate_config(config, load_schema(ROOT / "config" / "schema.yaml"), base_dir=ROOT)["decode"]["batched"]
    paths = {name: tmp_path / f"{name}.{ext}" for name, ext in
             (("logits", "safetensors"), ("adaptation", "json"), ("decode", "safetensors"))}
    run_target("cpu-hf-fp32", tiny_model_dir, ["The capital of France is", "def fib(n):", "Once upon a time"],
               EngineSettings(threads=1), paths, greedy_tokens=1,
               decode={"prompts": 3, "max_tokens": 8, "batched": batched})
    decoded = read_dump(paths["decode"])
    assert decoded.meta["decode"]["batches"] == batches and decoded.num_prompts == 3
