"""Benchmarks: percentile / TPOT / ITL arithmetic on synthetic timestamps, throughput tables, the roofline, the
consistency flags (the seed's own figures must fail them), the plan checks that run at config validation and
before an engine starts, the time budget per grid cell (a cell over it skipped and shown so), the reference not
benchmarked by default (and the report saying so), atomic artifacts, and the report's performance section. A
fake engine with a synthetic clock stands in for real engines (test_workflow runs the real ones)."""

from __future__ import annotations

import copy
import csv
import json
import math

import pytest
import yaml

from conftest import ROOT, copy_workflow, planned_jobs
from portcheck.benchmarks import statistics as perf
from portcheck.benchmarks.offline import measure_grid, run_benchmarks
from portcheck.benchmarks.plan import check_plan, engine_limits, grid_cells, plan_for_device
from portcheck.benchmarks.cross_checks import consistency_flags
from portcheck.benchmarks.roofline import roofline
from portcheck.benchmarks.workload import random_prompts
from portcheck.engines.base import Engine
from portcheck.engines.outputs import TimedGeneration
from portcheck.config import load_schema, validate_config
from portcheck.errors import PortcheckError
from portcheck.engines.settings import EngineSettings

BENCH = {
    "input_len": 4, "seed": 0, "temperature": 0.0, "warmup": 1, "repetitions": 2, "percentiles": [50, 90, 99],
    "cell_budget_s": 30,
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
    assert "bench.input_len 4 + max_tokens 20 = 24 > max_model_len 22" in message
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
    on_gpu = TargetData("gpu-hf-bf16", "target", bench=seed, paths=paths,
                        env={"gpu": [{"name": "NVIDIA H200", "memory": "143771 MiB", "driver": "580.159.04"}]},
                        bench_checks=check_benchmarks(seed, None, None, 0.25))
    section = performance_section([ran, on_npu, unknown, missing, on_gpu])
    views = {t["target"]: t for t in section["targets"]}
    assert views["cpu-vllm-bf16"]["bench"] is None and "absent" in views["cpu-vllm-bf16"]["bench_reason"]
    assert "vllm targets only" in views["cpu-hf-bf16"]["serve_reason"]
    sweep = markdown_table(views["cpu-hf-bf16"]["bench"]["tables"][1]["table"])
    assert "| 4 | 20 | 0.052 | 80 | 1,538.5 |" in sweep
    assert sweep.endswith(f"*Source: {cell(str(outputs['json']) + ' (throughput[1].rows)')}*")
    roofline = {row[0]: row for row in section["roofline"]["rows"]}
    assert roofline["cpu-hf-bf16"][1] == "peak unknown (no hardware configured for this cpu target)"
    assert roofline["cpu-hf-bf16"][4] == "unknown"
    # the GPU the environment saw is named for the user to set, never taken as the peak
    assert roofline["gpu-hf-bf16"][1] == ("peak unknown (no hardware configured for this gpu target; its environment "
                                          "saw NVIDIA H200: name its entry of `hardware` in "
                                          "targets.gpu-hf-bf16.hardware)") and roofline["gpu-hf-bf16"][2] == "unknown (not configured)"
    assert roofline["npu-vllm-bf16"][1:3] == ["Ascend 910B2 (third-party)", "1.60 TB/s"]
    assert roofline["npu-hf-bf16"][1] == "Ascend 999 (not in the hardware table: peak unknown)"
    assert roofline["cpu-vllm-bf16"][1] == "not run"
    failed = [row for row in section["consistency"]["rows"] if row[8].startswith("❌")]
    assert [(row[0], row[1]) for row in failed] == [("npu-vllm-bf16", "grid vs latency runs"),
                                                    ("npu-hf-bf16", "grid vs latency runs"),
                                                    ("gpu-hf-bf16", "grid vs latency runs")]
    assert section["flags_failed"] == 3 and section["tolerance"] == "25%"


def test_run_benchmarks_refuses_an_oversized_grid_before_any_engine_start(tmp_path, fake_model):
    def factory(*args):
        raise AssertionError("the engine must not start for a plan that does not fit")

    outputs = {"json": tmp_path / "bench.json", "csv": tmp_path / "bench.csv"}
    with pytest.raises(PortcheckError, match="max_num_seqs 2"):
        run_benchmarks("cpu-vllm-bf16", fake_model, EngineSettings(max_num_seqs=2), copy.deepcopy(BENCH), outputs,
                       engine_factory=factory, tokenizer=FakeTokenizer())
    assert not outputs["json"].exists() and not outputs["csv"].exists()


# ---------------------------------------------------------------- the time budget per grid cell


def budget_plan(budget: float) -> dict:
    plan = plan_for_device(copy.deepcopy(BENCH), "cpu")  # 1 warm-up + 1 timed run per cell
    plan["grid"] = [{"title": "batch 8", "batch_sizes": [8], "max_tokens": [10, 20, 50]},
                    {"title": "batch sweep", "batch_sizes": [1, 2, 4, 8], "max_tokens": [20]}]
    return {**plan, "cell_budget_s": budget}


def test_a_cell_over_the_budget_is_skipped_with_its_estimate(tmp_path, fake_model):
    from portcheck.targets import parse_target

    engine = FakeEngine(parse_target("cpu-hf-bf16"), fake_model, EngineSettings())
    prompts = random_prompts(FakeTokenizer(), 8, 4, seed=0)
    # One run of batch b x m tokens takes 10 + b + 2 (m - 1) ms: 2 runs of 8 x 10 take 72 ms, of 8 x 20 112 ms.
    tables = measure_grid(engine, prompts, budget_plan(0.105))
    rows = {(r["batch_size"], r["max_tokens"]): r for table in tables for r in table["rows"]}
    assert [cell for cell, r in rows.items() if r.get("skipped")] == [(8, 20), (8, 50)]
    over = rows[(8, 20)]["skipped"]
    assert over["estimated_s"] == pytest.approx(0.112) and over["budget_s"] == 0.105
    assert over["reason"] == "over the budget: estimated 0.112 s > budget 0.105 s"
    assert over["basis"] == "2 x its first run (0.056 s)"
    # 8 x 50 contains 8 x 20: skipped on that cell's first run, without a run of its own
    assert rows[(8, 50)]["skipped"]["basis"].startswith("at least 2 x the first run of batch 8 x max_tokens 20")
    assert engine.calls == 2 + 1 + 0 + 2 * 3  # 8 x 10 timed, 8 x 20 first run only, 8 x 50 none, three sweep cells
    assert rows[(8, 20)]["output_tok_s"] is None and rows[(4, 20)]["output_tok_s"] == pytest.approx(80 / 0.052)
    assert "skipped" not in rows[(4, 20)]


def test_cells_over_a_tiny_budget_are_skipped_and_shown_so_on_the_embedded_model(tmp_path, tiny_model_dir):
    """The hf engine on the embedded model: every cell over a 1 ms budget is kept in bench.json, the CSV and the
    report's table as skipped with its estimate; the latency runs and the checks still work."""
    from portcheck.benchmarks.checks import check_benchmarks
    from portcheck.report.format import markdown_table
    from portcheck.report.load import TargetData
    from portcheck.report.sections.performance import performance_section

    bench = {**copy.deepcopy(BENCH), "cell_budget_s": 0.001, "overrides": {},
             "grid": [{"title": "tiny", "batch_sizes": [1, 2], "max_tokens": [2, 4]}],
             "latency": {"batch_size": 2, "input_len": 4, "output_len": 3, "prefill_prompts": 1, "warmup": 0,
                         "repetitions": 1}}
    outputs = {"json": tmp_path / "bench.json", "csv": tmp_path / "bench.csv"}
    result = run_benchmarks("cpu-hf-fp32", tiny_model_dir, EngineSettings(threads=1), bench, outputs)
    rows = result["throughput"][0]["rows"]
    assert len(rows) == 4 and all(r["skipped"]["budget_s"] == 0.001 for r in rows)
    assert all(r["skipped"]["estimated_s"] > 0.001 and r["output_tok_s"] is None for r in rows)
    assert sum("a cell it contains" in r["skipped"]["basis"] for r in rows) == 3  # one run for the whole grid
    assert result["latency"]["tpot_s"]["p50"] > 0
    skipped_csv = [r for r in csv.DictReader(outputs["csv"].open()) if r["statistic"] == "skipped (estimate)"]
    assert len(skipped_csv) == 4
    checks = check_benchmarks(result, None, None, 0.25)
    assert not [f for f in checks["consistency"] if f["check"] == "grid vs latency runs"]  # nothing measured
    data = TargetData("cpu-hf-fp32", "target", bench=result, bench_checks=checks, paths={"bench": str(outputs["json"])})
    view = performance_section([data])["targets"][0]["bench"]
    table = markdown_table(view["tables"][0]["table"])
    first = rows[0]["skipped"]["estimated_s"]
    assert f"| 1 | 2 | skipped (over the budget: estimated {first:.3g} s &gt; budget 0.001 s) |" in table
    assert "a cell whose runs would take over 0.001 s skipped (bench.cell_budget_s)" in view["plan"]


# ---------------------------------------------------------------- the references are not benchmarked by default


def test_the_references_are_not_benchmarked_by_default_and_the_report_says_so(tmp_path, fake_model):
    """The reference and the bf16 floor (a second reference: the vs-floor checks' unit) are not benchmarked unless
    bench.reference / bench.floor say so; the report names the setting."""
    from portcheck.benchmarks.plan import benched_targets, not_benchmarked
    from portcheck.report.load import load_targets
    from portcheck.report.sections.performance import performance_section

    config = validated()
    targets = ["cpu-hf-fp32", "cpu-hf-bf16", "cpu-vllm-bf16"]
    assert benched_targets(targets, "cpu-hf-fp32", config["bench"]) == ["cpu-vllm-bf16"]
    assert benched_targets(targets, "cpu-hf-fp32", {**config["bench"], "reference": True}) == [
        "cpu-hf-fp32", "cpu-vllm-bf16"]
    assert benched_targets(targets, "cpu-hf-fp32", {**config["bench"], "floor": True}) == [
        "cpu-hf-bf16", "cpu-vllm-bf16"]
    # the floor as the reference: bench.reference alone decides
    assert benched_targets(targets, "cpu-hf-bf16", {**config["bench"], "reference": True}) == targets
    assert not_benchmarked(targets, "cpu-hf-bf16", config["bench"]) == {"cpu-hf-bf16": "bench.reference is false"}
    off = not_benchmarked(targets[:2], "cpu-hf-fp32", {**config["bench"], "floor": True})
    assert off == {"cpu-hf-fp32": "bench.reference is false"}
    result, outputs = run_fake(tmp_path, fake_model)
    artifacts = {"reference": "cpu-hf-fp32", "compare": {},
                 "targets": {"cpu-hf-fp32": {"bench": None, "bench_checks": None},
                             "cpu-hf-bf16": {"bench": str(outputs["json"])}},
                 "turned_off_by": {t: {"bench": why, "bench_checks": why} for t, why in off.items()}}
    section = performance_section(load_targets(artifacts))
    views = {t["target"]: t for t in section["targets"]}
    assert views["cpu-hf-fp32"]["bench"] is None and views["cpu-hf-fp32"]["bench_reason"] == "bench.reference is false"
    overview = {row[0]: row for row in section["overview"]["rows"]}
    assert overview["cpu-hf-fp32"][1] == "not run (bench.reference is false)"
    assert overview["cpu-hf-bf16"][1] == "1.50"  # the target under test is measured
    roofline = {row[0]: row for row in section["roofline"]["rows"]}
    assert roofline["cpu-hf-fp32"][1] == "not run (bench.reference is false)"


def test_the_references_get_no_benchmark_jobs_unless_turned_on(tmp_path):
    """A dry run of the CI config (bench.floor on: the floor is its only target under test): the reference gets no
    run_benchmarks / check_benchmarks job by default, and bench.reference on adds exactly its two; bench.floor off
    takes the floor's two away."""
    workdir = copy_workflow(tmp_path / "w")
    config = str(ROOT / ".test" / "config.yaml")
    off = planned_jobs(workdir, "--configfile", config)
    on = planned_jobs(workdir, "--configfile", config, "--config", "bench={'reference': True}")
    no_floor = planned_jobs(workdir, "--configfile", config, "--config", "bench={'floor': False}")
    assert (off["run_benchmarks"], off["check_benchmarks"]) == (1, 1)
    assert (on["run_benchmarks"], on["check_benchmarks"]) == (2, 2)
    assert "run_benchmarks" not in no_floor and "check_benchmarks" not in no_floor and no_floor["dump_logits"] == 2


# ---------------------------------------------------------------- bad input, refused at config validation


def validated(change=lambda config: None) -> dict:
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    change(config)
    return validate_config(config, load_schema(ROOT / "config" / "schema.yaml"), base_dir=ROOT)


def refusal(change) -> str:
    with pytest.raises(PortcheckError) as error:
        validated(change)
    return str(error.value)


@pytest.mark.parametrize("budget, expected", [
    (0, "bench.cell_budget_s: 0 is less than or equal to the minimum of 0"),
    (-5, "bench.cell_budget_s: -5 is less than or equal to the minimum of 0"),
    ("soon", "bench.cell_budget_s must be of type number, got 'soon'"),
    (True, "bench.cell_budget_s must be of type number, got True"),
])
def test_a_budget_that_is_not_a_positive_number_is_refused(budget, expected):
    assert expected in refusal(lambda config: config["bench"].update(cell_budget_s=budget))


def test_a_budget_override_that_is_not_a_positive_number_is_refused():
    message = refusal(lambda config: config["bench"]["overrides"]["cpu"].update(cell_budget_s=0))
    assert "bench.overrides.cpu.cell_budget_s must be a positive number of seconds" in message


def test_a_grid_cell_or_latency_run_longer_than_max_model_len_is_refused():
    def shrink(config):
        config["targets"]["cpu-hf-bf16"]["max_model_len"] = 40
        config["corpus"]["window_length"] = 32  # the corpus windows fit: only the benchmark is refused
        config["bench"]["latency"]["input_len"] = 30
        config["bench"]["floor"] = True  # the bf16 floor benchmarked: its max_model_len limits its cells

    message = refusal(shrink)
    assert ("benchmarks of cpu-hf-bf16 (with bench.overrides.cpu): bench.grid cell batch 8 x max_tokens 10: "
            "bench.input_len 32 + max_tokens 10 = 42 > targets.cpu-hf-bf16.max_model_len 40") in message
    assert ("bench.latency batch 8: bench.latency.input_len 30 + output_len 16 = 46 > "
            "targets.cpu-hf-bf16.max_model_len 40") in message
    # the reference and the floor are not benchmarked by default: their max_model_len limits no benchmark
    validated(lambda config: config["targets"]["cpu-hf-fp32"].update(max_model_len=257))
    validated(lambda config: (shrink(config), config["bench"].update(floor=False)))


def test_bench_real_shape_reads_each_jobs_time_from_snakemakes_log():
    import sys

    sys.path.insert(0, str(ROOT / "scripts"))
    from bench_real_shape import config, job_times, peak_during, run_sampled

    log = """[Fri Dec  4 16:58:30 2026]
rule dump_vision:
    input: a
    output: results/m/cpu-vllm-bf16/vision.safetensors
    jobid: 26
    reason: Missing output files
    wildcards: target=cpu-vllm-bf16
[Fri Dec  4 16:58:31 2026]
localrule report:
    jobid: 1
[Fri Dec  4 17:01:05 2026]
Finished jobid: 26 (Rule: dump_vision)
1 of 2 steps (50%) done
[Fri Dec  4 17:01:07 2026]
Finished jobid: 1 (Rule: report)
"""
    jobs = job_times(log)
    assert [(j["rule"], j["wildcards"], j["end"] - j["start"]) for j in jobs] == [
        ("dump_vision", "target=cpu-vllm-bf16", 155.0), ("report", "", 156.0)]
    start = jobs[0]["start"]
    samples = [(start - 5, 9), (start, 1), (start + 100, 7), (start + 155.5, 3), (start + 157, 8)]
    assert peak_during(samples, start, jobs[0]["end"]) == 7 and peak_during(samples, start + 200, start + 300) is None
    settings = config(ROOT / "m", ["bench.cell_budget_s=5", "targets.cpu-hf-bf16.enabled=false"])
    assert settings["model"] == {"name": "real-shape", "source": "local", "path": str(ROOT / "m")}
    assert settings["bench"] == {"cell_budget_s": 5}
    assert settings["targets"] == {"cpu-vllm-bf16": {"logprobs_topk": 20}, "cpu-hf-bf16": {"enabled": False}}
    run, samples = run_sampled([sys.executable, "-c", "import time; x = bytearray(64 << 20); time.sleep(1.5); "
                                "print('done')"], ROOT, every=0.2)
    assert run.returncode == 0 and run.stdout == "done\n" and max(rss for _, rss in samples) > 64 << 20


def test_bench_workflow_reads_a_mode_reference_skipped_without_an_engine(tmp_path):
    """A prefix-cache run that could not hit has its reference written by score_mode without an engine start: no
    run_seconds in its dump, which the printed costs say instead of failing after the whole run."""
    import sys

    sys.path.insert(0, str(ROOT / "scripts"))
    from bench_workflow import mode_costs

    (tmp_path / "modes").mkdir()
    proof = {"run": "cpu-vllm-bf16+prefix-cache", "status": "not run", "job_seconds": 11.0, "decode_seconds": 0.0,
             "timings": {"engine_start_s": 4.3}}
    (tmp_path / "modes" / "prefix-cache.json").write_text(json.dumps(proof))
    # an mtp run's reference acceptance (score_mtp) lies beside the proofs and is not one
    (tmp_path / "modes" / "mtp.reference_acceptance.json").write_text(json.dumps({"status": "measured"}))
    metas = {"prefix-cache.reference.safetensors": {"target": "cpu-hf-fp32"},
             "base.safetensors": {"run_seconds": 279.9}}
    for name in metas:
        (tmp_path / "modes" / name).write_bytes(b"")
    assert mode_costs(tmp_path, lambda path: metas[path.name]) == [
        "  cpu-vllm-bf16+prefix-cache: not run, job 11.0 s (engine start 4.3 s), decode 0.0 s vs base 279.9 s; "
        "reference scoring skipped"]
