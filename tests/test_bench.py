"""Benchmarks: percentile / TPOT / ITL arithmetic on synthetic timestamps, throughput tables, the roofline, the
consistency flags (the seed's own figures must fail them), the plan checks that run before an engine starts,
atomic artifacts, and the report's performance section. A fake engine with a synthetic clock stands in for
real engines (test_workflow runs the real ones)."""

from __future__ import annotations

import copy
import csv
import json
import math

import pytest

from portcheck.benchmarks import statistics as perf
from portcheck.benchmarks.offline import (
    check_plan,
    engine_limits,
    grid_cells,
    plan_for_device,
    run_benchmarks,
)
from portcheck.benchmarks.cross_checks import consistency_flags
from portcheck.benchmarks.roofline import roofline
from portcheck.benchmarks.workload import random_prompts
from portcheck.engines.base import Engine
from portcheck.engines.outputs import TimedGeneration
from portcheck.errors import PortcheckError
from portcheck.engines.settings import EngineSettings

BENCH = {
    "input_len": 4, "seed": 0, "temperature": 0.0, "warmup": 1, "repetitions": 2, "percentiles": [50, 90, 99],
    "consistency_tolerance": 0.25,
    "grid": [{"title": "batch 8", "batch_sizes": [8], "max_tokens": [10, 20]},
             {"title": "batch sweep", "batch_sizes": [1, 2, 4, 8], "max_tokens": [20]}],
    "latency": {"batch_size": 8, "input_len": 4, "output_len": 5, "prefill_prompts": 2, "warmup": 1, "repetitions": 2},
    "overrides": {"cpu": {"repetitions": 1, "latency": {"repetitions": 3}}},
}


# ---------------------------------------------------------------- arithmetic


def test_request_latency_follows_vllm_definitions():
    # tokens at 0.10, 0.13, 0.17, 0.20 s after submission
    r = perf.request_latency([0.10, 0.13, 0.17, 0.20])
    assert r["ttft"] == pytest.approx(0.10)
    assert r["e2e"] == pytest.approx(0.20)
    assert r["tpot"] == pytest.approx((0.20 - 0.10) / 3)  # first token excluded
    assert r["itl"] == pytest.approx([0.03, 0.04, 0.03])
    single = perf.request_latency([0.5])
    assert single["tpot"] is None and single["itl"] == []
    with pytest.raises(ValueError):
        perf.request_latency([0.2, 0.1])


def test_stats_percentiles_interpolate_like_numpy():
    s = perf.stats([1.0, 2.0, 3.0, 4.0, None, math.nan], [50, 90, 99])
    assert s["n"] == 4 and s["mean"] == 2.5 and s["min"] == 1.0 and s["max"] == 4.0
    assert s["p50"] == pytest.approx(2.5)
    assert s["p90"] == pytest.approx(3.7)  # 1 + 0.9 * 3
    assert s["p99"] == pytest.approx(3.97)
    assert perf.stats([])["p50"] is None


def test_latency_summary_pools_itl_gaps_over_requests():
    requests = [perf.request_latency([0.1, 0.2, 0.3]), perf.request_latency([0.2, 0.5])]
    summary = perf.latency_summary(requests, [50])
    assert summary["itl_s"]["n"] == 3  # 2 + 1 gaps
    assert summary["itl_s"]["mean"] == pytest.approx((0.1 + 0.1 + 0.3) / 3)
    assert summary["tpot_s"]["mean"] == pytest.approx((0.1 + 0.3) / 2)
    assert summary["ttft_s"]["p50"] == pytest.approx(0.15)


def test_throughput_rows_label_output_and_total_tokens_apart_and_scale_against_batch_1():
    rows = perf.add_scaling([perf.throughput_row(1, 10, 20, 0.5), perf.throughput_row(4, 10, 20, 1.0),
                             perf.throughput_row(4, 10, 50, 1.0)])
    one, four, other = rows
    assert one["output_tok_s"] == 40 and one["total_tok_s"] == 60
    assert four["output_tok_s"] == 80 and four["total_tok_s"] == 120 and four["requests_s"] == 4
    assert four["speedup_vs_batch1"] == 2 and four["linear_ratio"] == 0.5
    assert other["speedup_vs_batch1"] is None  # no batch-1 row at max_tokens 50


def test_roofline_arithmetic_and_unknown_peaks():
    hw = {"memory_bandwidth_bytes_s": 1.6e12, "bf16_dense_flops": 354e12, "source": "test"}
    r = roofline(1.6e9, 0.004, hw, parameters=0.8e9, prefill_tokens=64, prefill_s=0.01)
    assert r["decode_floor_s"] == pytest.approx(1e-3)
    assert r["tpot_over_floor"] == pytest.approx(4.0)
    assert r["bandwidth_utilisation"] == pytest.approx(0.25)
    assert r["prefill_achieved_flops"] == pytest.approx(2 * 0.8e9 * 64 / 0.01)
    assert r["prefill_flops_utilisation"] == pytest.approx(2 * 0.8e9 * 64 / 0.01 / 354e12)
    unknown = roofline(1.6e9, 0.004, None, parameters=0.8e9, prefill_tokens=64, prefill_s=0.01)
    assert unknown["decode_floor_s"] is None and unknown["prefill_flops_utilisation"] is None
    assert unknown["prefill_achieved_flops"] is not None  # measured, only the peak is unknown


def seed_bench() -> dict:
    """The seed report's figures as a bench.json: 26.7 tok/s at batch 1 (0.750 s for 20 tokens), 178.6 tok/s at
    batch 8, prefill 177.9 ms for 2 prompts, TTFT ~178 ms and 'decode ~6.2 ms/step' at 8 prompts."""
    rows = perf.add_scaling([perf.throughput_row(1, 8, 20, 0.750), perf.throughput_row(8, 8, 20, 0.896)])
    return {
        "throughput": [{"title": "batch sweep", "rows": rows}],
        "latency": {"batch_size": 8, "input_len": 8, "output_len": 20, "ttft_s": {"p50": 0.178},
                    "tpot_s": {"p50": 0.0062}},
        "prefill": {"prompts": 2, "input_len": 8, "latency_s": {"p50": 0.1779}},
    }


def test_the_seeds_figures_fail_the_consistency_checks():
    flags = consistency_flags(seed_bench(), tolerance=0.25)
    by_check = {(f["check"], f["subject"]): f for f in flags}
    grid = by_check[("grid vs latency runs", "batch 8, max_tokens 20")]
    # 0.178 + 19 x 0.0062 = 0.2958 s predicted against 0.896 s measured
    assert grid["expected"] == pytest.approx(0.2958)
    assert grid["ratio"] == pytest.approx(0.896 / 0.2958)
    assert grid["ok"] is False
    bound = by_check[("output tok/s vs batch / TPOT", "batch 8, max_tokens 20")]
    assert bound["expected"] == pytest.approx(8 / 0.0062) and bound["ok"] is True
    ttft = next(f for f in flags if f["check"] == "TTFT vs prefill latency")
    assert ttft["relation"] == "≥" and ttft["ok"] is True  # 2 prompts < 8: TTFT >= prefill
    floor = next(f for f in flags if f["check"] == "TPOT vs decode floor")
    assert floor["ok"] is None  # no hardware configured: not checkable, not passed


def test_consistent_figures_pass_and_a_tpot_under_the_floor_fails():
    bench = seed_bench()
    bench["throughput"][0]["rows"][1].update(elapsed_s=0.30, output_tok_s=160 / 0.30)
    flags = consistency_flags(bench, tolerance=0.25, decode_floor_s=0.01)
    assert next(f for f in flags if f["check"] == "grid vs latency runs")["ok"] is True
    floor = next(f for f in flags if f["check"] == "TPOT vs decode floor")
    assert floor["ok"] is False and floor["ratio"] == pytest.approx(0.62)


# ---------------------------------------------------------------- plan


def test_device_overrides_merge_one_level_deep():
    plan = plan_for_device(BENCH, "cpu")
    assert plan["repetitions"] == 1 and plan["latency"]["repetitions"] == 3 and plan["latency"]["batch_size"] == 8
    assert "overrides" not in plan
    assert plan_for_device(BENCH, "npu")["repetitions"] == 2


def test_grid_cells_run_shared_cells_once():
    assert grid_cells(BENCH) == [(8, 10), (8, 20), (1, 20), (2, 20), (4, 20)]


def test_grid_larger_than_the_engine_allows_is_rejected_before_it_starts():
    settings = EngineSettings(max_model_len=22, max_num_seqs=4)
    limits = engine_limits("vllm", settings, {"max_position_embeddings": 4096})
    assert limits == {"max_model_len": 22, "max_num_seqs": 4}
    with pytest.raises(PortcheckError) as error:
        check_plan(plan_for_device(BENCH, "cpu"), limits, "cpu-vllm-bf16")
    message = str(error.value)
    assert "batch 8 > max_num_seqs 4" in message
    assert "prompt 4 + 20 new tokens = 24 > max_model_len 22" in message
    assert "bench.grid" in message
    assert engine_limits("hf", EngineSettings(), {"text_config": {"max_position_embeddings": 64}}) == {
        "max_model_len": 64, "max_num_seqs": None}


class FakeTokenizer:
    all_special_ids = [0, 1]

    def __len__(self):
        return 50


def test_random_prompts_have_the_configured_length_and_no_special_ids():
    prompts = random_prompts(FakeTokenizer(), 3, 7, seed=5)
    assert [len(p) for p in prompts] == [7, 7, 7]
    assert all(2 <= t < 50 for p in prompts for t in p)
    assert prompts == random_prompts(FakeTokenizer(), 3, 7, seed=5)


# ---------------------------------------------------------------- runs with a fake engine


class FakeEngine(Engine):
    """A synthetic clock: prefill 10 ms + 1 ms per prompt, then 2 ms per decode step (every request one token)."""

    def __init__(self, target, model_dir, settings, fail_after: int | None = None):
        super().__init__(target, model_dir, settings)
        self.timings = {"engine_start_s": 1.5, "weight_load_s": 0.5}
        self.calls = 0
        self.fail_after = fail_after

    def timed_generate(self, prompts, max_new_tokens, temperature=0.0, seed=None):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise KeyboardInterrupt  # interrupted mid-grid
        first = 0.010 + 0.001 * len(prompts)
        times = [first + 0.002 * i for i in range(max_new_tokens)]
        return times[-1], [TimedGeneration([7] * max_new_tokens, list(times)) for _ in prompts]

    def score(self, prompts):
        raise NotImplementedError

    def decode(self, prompts, max_new_tokens):
        raise NotImplementedError

    def generate(self, prompts, max_new_tokens, temperature=0.0, top_p=1.0, seed=None):
        raise NotImplementedError

    def adaptation(self):
        return {}

    def peak_memory(self):
        return {"bytes": 1234, "source": "fake"}


@pytest.fixture()
def fake_model(tmp_path):
    """A config.json and a safetensors header with one text, one mtp and one vision tensor."""
    import numpy as np
    from safetensors.numpy import save_file

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"max_position_embeddings": 512}))
    save_file({"model.embed.weight": np.zeros((10, 4), np.float32), "mtp.fc.weight": np.zeros((3, 3), np.float32),
               "model.visual.w": np.zeros((5,), np.float32)}, str(model / "model.safetensors"))
    return model


def run_fake(tmp_path, fake_model, **engine_kwargs):
    outputs = {"json": tmp_path / "out" / "bench.json", "csv": tmp_path / "out" / "bench.csv"}
    factory = lambda target, model_dir, settings: FakeEngine(target, model_dir, settings, **engine_kwargs)  # noqa: E731
    result = run_benchmarks("cpu-hf-bf16", fake_model, EngineSettings(), copy.deepcopy(BENCH), outputs,
                            engine_factory=factory, tokenizer=FakeTokenizer())
    return result, outputs


def test_benchmark_run_on_a_synthetic_clock(tmp_path, fake_model):
    result, outputs = run_fake(tmp_path, fake_model)
    stored = json.loads(outputs["json"].read_text())
    assert stored == json.loads(json.dumps(result))
    sweep = {r["batch_size"]: r for r in stored["throughput"][1]["rows"]}
    # batch 4, 20 tokens: first token at 14 ms, last at 14 + 19 x 2 = 52 ms
    assert sweep[4]["elapsed_s"] == pytest.approx(0.052)
    assert sweep[4]["output_tok_s"] == pytest.approx(80 / 0.052)
    assert sweep[4]["total_tok_s"] == pytest.approx(4 * 24 / 0.052)
    assert sweep[1]["speedup_vs_batch1"] == 1
    assert sweep[4]["speedup_vs_batch1"] == pytest.approx((80 / 0.052) / (20 / 0.049))
    lat = stored["latency"]
    assert lat["repetitions"] == 3 and lat["requests"] == 24  # cpu override: 3 runs x batch 8
    assert lat["ttft_s"]["p50"] == pytest.approx(0.018) and lat["tpot_s"]["p99"] == pytest.approx(0.002)
    assert lat["itl_s"]["n"] == 24 * 4 and lat["e2e_s"]["mean"] == pytest.approx(0.026)
    assert stored["prefill"]["latency_s"]["p50"] == pytest.approx(0.012)
    # text weights only (10 x 4), in bf16
    assert stored["memory"]["weights"] == pytest.approx({**stored["memory"]["weights"], "bytes": 80, "parameters": 40})
    assert stored["memory"]["peak"]["bytes"] == 1234
    assert stored["timings"]["engine_start_s"] == 1.5 and stored["timings"]["weight_load_s"] == 0.5
    rows = list(csv.DictReader(outputs["csv"].open()))
    tok_s = [r for r in rows if r["section"] == "throughput" and r["metric"] == "output_tok_s" and r["batch_size"] == "4"]
    assert float(tok_s[0]["value"]) == pytest.approx(80 / 0.052)
    # the synthetic clock is self-consistent: every check that can be made fits
    flags = consistency_flags(stored, 0.25)
    assert [f["ok"] for f in flags if f["ok"] is not None] and all(f["ok"] for f in flags if f["ok"] is not None)


def test_interrupted_benchmark_leaves_no_artifact(tmp_path, fake_model):
    with pytest.raises(KeyboardInterrupt):
        run_fake(tmp_path, fake_model, fail_after=3)
    out = tmp_path / "out"
    assert not out.exists() or not any(out.iterdir()), "no artifact (not even a temporary file) may be left"


# ---------------------------------------------------------------- report


def test_report_performance_section_shows_tables_roofline_flags_and_not_run(tmp_path, fake_model):
    from portcheck.benchmarks.checks import check_benchmarks
    from portcheck.report.format import cell, markdown_table
    from portcheck.report.load import TargetData
    from portcheck.report.sections.performance import performance_section

    result, outputs = run_fake(tmp_path, fake_model)
    seed = {**seed_bench(), "percentiles": [50, 90, 99]}  # bench.json always lists them
    ascend = {"memory_bandwidth_bytes_s": 1.6e12, "bf16_dense_flops": 354e12, "source": "third-party"}
    paths = {"bench": str(outputs["json"]), "bench_checks": "results/x/bench_checks.json"}
    ran = TargetData("cpu-hf-bf16", "target", bench=result, bench_checks=check_benchmarks(result, None, None, 0.25),
                     paths=paths)
    on_npu = TargetData("npu-vllm-bf16", "target", bench=seed, paths=paths,
                        bench_checks=check_benchmarks(seed, "Ascend 910B2", ascend, 0.25))
    unknown = TargetData("npu-hf-bf16", "target", bench=seed, paths=paths,
                         bench_checks=check_benchmarks(seed, "Ascend 999", None, 0.25))
    missing = TargetData("cpu-vllm-bf16", "target",
                         absent={"bench": "results/x/bench.json is absent", "serve": "results/x/serve.json is absent"})
    section = performance_section([ran, on_npu, unknown, missing])
    views = {t["target"]: t for t in section["targets"]}
    assert views["cpu-vllm-bf16"]["bench"] is None and "absent" in views["cpu-vllm-bf16"]["bench_reason"]
    assert "vllm targets only" in views["cpu-hf-bf16"]["serve_reason"]
    sweep = markdown_table(views["cpu-hf-bf16"]["bench"]["tables"][1]["table"])
    assert "| 4 | 20 | 0.052 | 80 | 1,538.5 |" in sweep
    assert sweep.endswith(f"*Source: {cell(str(outputs['json']) + ' (throughput[1].rows)')}*")
    roofline = {row[0]: row for row in section["roofline"]["rows"]}
    assert roofline["cpu-hf-bf16"][1].startswith("peak unknown") and roofline["cpu-hf-bf16"][4] == "unknown"
    assert roofline["npu-vllm-bf16"][1:3] == ["Ascend 910B2 (third-party)", "1.60 TB/s"]
    assert roofline["npu-hf-bf16"][1] == "Ascend 999 (not in the hardware table: peak unknown)"
    assert roofline["cpu-vllm-bf16"][1] == "not run"
    failed = [row for row in section["consistency"]["rows"] if row[8].startswith("❌")]
    assert [(row[0], row[1]) for row in failed] == [("npu-vllm-bf16", "grid vs latency runs"),
                                                    ("npu-hf-bf16", "grid vs latency runs")]
    assert section["flags_failed"] == 2 and section["tolerance"] == "25%"


def test_run_benchmarks_refuses_an_oversized_grid_before_any_engine_start(tmp_path, fake_model):
    def factory(*args):
        raise AssertionError("the engine must not start for a plan that does not fit")

    outputs = {"json": tmp_path / "bench.json", "csv": tmp_path / "bench.csv"}
    with pytest.raises(PortcheckError, match="max_num_seqs 2"):
        run_benchmarks("cpu-vllm-bf16", fake_model, EngineSettings(max_num_seqs=2), copy.deepcopy(BENCH), outputs,
                       engine_factory=factory, tokenizer=FakeTokenizer())
    assert not outputs["json"].exists() and not outputs["csv"].exists()
