"""Offline benchmarks of one target, with one engine start: the throughput grid (the seed's two tables by
default), latency percentiles (TTFT, TPOT, ITL, E2E, after warm-up), prefill latency, memory, engine start and
weight-load time. Every engine and device runs this same code through Engine.timed_generate.

Prompts are random token ids of a fixed length (as vLLM's benchmark tools do), so results compare across devices.
The grid is checked against the engine's limits before the engine starts, and bench.json / bench.csv are written
atomically at the very end: an interrupted run leaves no artifact that looks complete."""

from __future__ import annotations

import csv
import io
import logging
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from portcheck.benchmarks import statistics as perf
from portcheck.atomic import atomic_path, write_json
from portcheck.errors import PortcheckError
from portcheck.benchmarks.plan import bench_params, check_plan, engine_limits, grid_cells, plan_for_device
from portcheck.benchmarks.workload import random_prompts
from portcheck.targets import parse_target

log = logging.getLogger("portcheck.bench")
SCHEMA_VERSION = 1


# ---------------------------------------------------------------- memory


def checkpoint_weights(model_dir: str | Path, dtype_name: str) -> dict[str, Any]:
    """Parameters of the text model in the checkpoint (MTP head and vision tower excluded: a decode step does
    not read them) and their bytes in the target's dtype: the weight bytes a decode step reads, the same for every
    engine (engines may hold packed copies outside their parameters)."""
    from portcheck.model.checkpoint import read_safetensors_header, tensor_part, weight_files
    from portcheck.engines.base import DTYPE_BYTES

    parameters = 0
    for file in weight_files(Path(model_dir)):
        for name, info in read_safetensors_header(file).items():
            if tensor_part(name) == "text":
                parameters += int(np.prod(info["shape"], dtype=np.int64))
    return {"bytes": parameters * DTYPE_BYTES[dtype_name], "parameters": parameters,
            "source": f"text tensors in the checkpoint's safetensors headers x {DTYPE_BYTES[dtype_name]} bytes "
                      f"({dtype_name}); MTP and vision tensors excluded"}


# ---------------------------------------------------------------- measurement


def _timed(engine, prompts, max_tokens, plan) -> tuple[float, list]:
    wall, generations = engine.timed_generate(prompts, max_tokens, temperature=plan["temperature"],
                                              seed=plan.get("seed"))
    for g in generations:
        if len(g.token_ids) != max_tokens:
            raise PortcheckError(f"the engine returned {len(g.token_ids)} tokens for a request of {max_tokens}; "
                                 "benchmarks need fixed output lengths (ignore_eos)")
    return wall, generations


def measure_grid(engine, prompts: list[list[int]], plan: dict, progress: Callable[[str], None] = log.info) -> list[dict]:
    """Median wall time of every grid cell over `repetitions` runs after `warmup` runs of the same cell; a cell
    whose runs would take longer than bench.cell_budget_s is skipped (a row that says so, never left out)."""
    cells, first_runs = {}, {}  # first_runs: (batch, max_tokens) -> wall time of that cell's first run
    for batch, max_tokens in grid_cells(plan):
        row = measure_cell(engine, prompts[:batch], max_tokens, plan, first_runs)
        cells[(batch, max_tokens)] = row
        done = row["skipped"]["reason"] if row.get("skipped") else f"{row['output_tok_s']:.1f} output tok/s"
        progress(f"grid batch {batch} x max_tokens {max_tokens}: {done}")
    tables = []
    for table in plan["grid"]:
        rows = [dict(cells[(b, m)]) for b in table["batch_sizes"] for m in table["max_tokens"]]
        tables.append({"title": table.get("title") or "", "rows": perf.add_scaling(rows)})
    return tables


def measure_cell(engine, prompts: list[list[int]], max_tokens: int, plan: dict, first_runs: dict) -> dict:
    """One cell's row: its runs are estimated before they are timed, first from a cell already run that it
    contains (more sequences or tokens never take less time), then from its own first run (the warm-up, or the
    first repetition without one); over the budget, the remaining runs are skipped."""
    batch, runs = len(prompts), plan["warmup"] + plan["repetitions"]
    contained = [(wall, cell) for cell, wall in first_runs.items() if cell[0] <= batch and cell[1] <= max_tokens]
    if contained:
        wall, (b, m) = max(contained)
        if wall * runs > plan["cell_budget_s"]:
            return skipped_row(batch, max_tokens, plan, wall * runs,
                               f"at least {runs} x the first run of batch {b} x max_tokens {m}, a cell it contains")
    first = _timed(engine, prompts, max_tokens, plan)[0]
    first_runs[(batch, max_tokens)] = first
    if first * runs > plan["cell_budget_s"]:
        return skipped_row(batch, max_tokens, plan, first * runs, f"{runs} x its first run ({_seconds(first)} s)")
    walls = [] if plan["warmup"] else [first]  # without a warm-up, the first run is the first repetition
    for _ in range(plan["warmup"] - 1):
        _timed(engine, prompts, max_tokens, plan)
    walls += [_timed(engine, prompts, max_tokens, plan)[0] for _ in range(plan["repetitions"] - len(walls))]
    row = perf.throughput_row(batch, plan["input_len"], max_tokens, statistics.median(walls))
    row["elapsed_s_runs"] = walls
    return row


def skipped_row(batch: int, max_tokens: int, plan: dict, estimated_s: float, basis: str) -> dict:
    """A cell not timed because its runs would exceed the budget: the figures None, the estimate and why."""
    row = perf.throughput_row(batch, plan["input_len"], max_tokens, None)
    budget = plan["cell_budget_s"]
    row["skipped"] = {"estimated_s": estimated_s, "budget_s": budget, "basis": basis,
                      "reason": f"over the budget: estimated {_seconds(estimated_s)} s > budget {budget:g} s"}
    return row


def _seconds(value: float) -> str:
    return f"{value:.3g}" if value < 1000 else f"{value:,.0f}"


def measure_latency(engine, prompts: list[list[int]], plan: dict, percentiles) -> tuple[dict, dict]:
    lat = plan["latency"]
    batch_prompts = prompts[: lat["batch_size"]]
    for _ in range(lat["warmup"]):
        _timed(engine, batch_prompts, lat["output_len"], plan)
    requests, walls = [], []
    for _ in range(lat["repetitions"]):
        wall, generations = _timed(engine, batch_prompts, lat["output_len"], plan)
        walls.append(wall)
        requests += [perf.request_latency(g.token_times) for g in generations]
    latency = {
        "batch_size": lat["batch_size"], "input_len": lat["input_len"], "output_len": lat["output_len"],
        "warmup": lat["warmup"], "repetitions": lat["repetitions"], "requests": len(requests),
        **perf.latency_summary(requests, percentiles),
        "batch_latency_s": perf.stats(walls, percentiles),
    }
    prefill_prompts = prompts[: lat["prefill_prompts"]]
    for _ in range(lat["warmup"]):
        _timed(engine, prefill_prompts, 1, plan)
    prefill_walls, prefill_ttft = [], []
    for _ in range(lat["repetitions"]):
        wall, generations = _timed(engine, prefill_prompts, 1, plan)
        prefill_walls.append(wall)
        prefill_ttft += [g.token_times[0] for g in generations]
    prefill = {
        "prompts": lat["prefill_prompts"], "input_len": lat["input_len"], "repetitions": lat["repetitions"],
        "latency_s": perf.stats(prefill_walls, percentiles),
        "ttft_s": perf.stats(prefill_ttft, percentiles),
        "definition": "wall time of one batch of `prompts` prompts generating 1 token (prefill + first token)",
    }
    return latency, prefill


def run_benchmarks(
    target_name: str,
    model_dir: str | Path,
    settings,
    bench_config: dict,
    outputs: dict[str, str | Path],
    engine_factory: Callable | None = None,
    tokenizer=None,
) -> dict:
    """Measure one target and write outputs["json"] and outputs["csv"] (atomically, at the end)."""
    result = measure_target(target_name, model_dir, settings, bench_config, engine_factory, tokenizer)
    write_outputs(result, outputs)
    return result


def measure_target(target_name: str, model_dir: str | Path, settings, bench_config: dict,
                   engine_factory: Callable | None = None, tokenizer=None) -> dict:
    """The benchmark record of one target: on an engine the factory starts (its own by default)."""
    from portcheck.model.checkpoint import load_model_config

    target = parse_target(target_name)
    plan = plan_for_device(bench_config, target.device)
    percentiles = list(plan["percentiles"])
    limits = engine_limits(target.engine, settings, load_model_config(model_dir))
    check_plan(plan, limits, target_name)
    if tokenizer is None:
        from portcheck.dump.run import load_tokenizer

        tokenizer = load_tokenizer(model_dir, settings.trust_remote_code)
    lat = plan["latency"]
    count = max([b for b, _ in grid_cells(plan)] + [lat["batch_size"], lat["prefill_prompts"]])
    grid_prompts = random_prompts(tokenizer, count, plan["input_len"], plan["seed"])
    latency_prompts = random_prompts(tokenizer, count, lat["input_len"], plan["seed"] + 1)
    if engine_factory is None:
        from portcheck.engines.factory import make_engine

        engine_factory = make_engine
    started = time.perf_counter()
    with engine_factory(target, model_dir, settings) as engine:
        start_s = time.perf_counter() - started
        timings = {k: round(v, 3) for k, v in engine.timings.items()}
        timings.setdefault("engine_start_s", round(start_s, 3))
        measured = time.perf_counter()
        throughput = measure_grid(engine, grid_prompts, plan)
        grid_s = time.perf_counter() - measured
        measured = time.perf_counter()
        latency, prefill = measure_latency(engine, latency_prompts, plan, percentiles)
        latency_s = time.perf_counter() - measured
        memory = {"weights": checkpoint_weights(model_dir, target.torch_dtype_name),
                  "engine_parameters": engine.weight_bytes(), "peak": engine.peak_memory(),
                  "capacity": engine.capacity()}
    timings.update({"grid_s": round(grid_s, 3), "latency_runs_s": round(latency_s, 3),
                    "total_s": round(time.perf_counter() - started, 3)})
    return {
        "schema": SCHEMA_VERSION, "target": target_name, "device": target.device, "engine": target.engine,
        "dtype": target.dtype, "plan": plan, "limits": limits, "prompt_source": "random token ids (special ids "
        "excluded), fixed length, numpy default_rng(seed)", "percentiles": percentiles,
        "throughput": throughput, "latency": latency, "prefill": prefill, "memory": memory, "timings": timings,
    }


# ---------------------------------------------------------------- one engine start with the dump

# The modules the benchmarks run (the engines included): the hand-off's code key.
BENCH_MODULES = ("benchmarks.offline",)


def bench_request(target_name: str, measured: dict, python_env: str | None, manifest: str | Path) -> dict:
    from portcheck.workflow.handoff import make_request

    return make_request("run_benchmarks", target_name, {"measured": measured, "python_env": python_env},
                        {"manifest": manifest}, BENCH_MODULES)


def benchmark_handover(config: dict, target_name: str, model_dir, settings, manifest: str | Path,
                       store: str | Path) -> dict[str, Callable]:
    """The dump job's offer to benchmark its target on the engine it started (one engine start instead of two):
    {"run_benchmarks": work(engine)}, or {} where the target is not benchmarked, runs in its own Python
    environment, or the store already holds this exact request's record."""
    import contextlib

    from portcheck.benchmarks.plan import benched_targets
    from portcheck.config import enabled_targets
    from portcheck.workflow.handoff import offer
    from portcheck.workflow.version_params import result_versions

    benched = benched_targets(enabled_targets(config), config["reference"], config["bench"])
    if target_name not in benched or config["targets"][target_name].get("python_env"):
        return {}
    measured = bench_params(config, target_name, result_versions(target_name))

    def benchmark(engine) -> dict:
        result = measure_target(target_name, model_dir, settings, measured["bench"],
                                lambda *_: contextlib.nullcontext(engine))
        return {**result, "engine_started_by": "dump_logits"}

    return offer(store, bench_request(target_name, measured, None, manifest), benchmark)


# ---------------------------------------------------------------- artifacts


CSV_COLUMNS = ["section", "table", "batch_size", "input_len", "max_tokens", "metric", "statistic", "value", "unit"]


def csv_rows(result: dict) -> list[dict]:
    """bench.json flattened to long-format rows: one measured figure per row."""
    rows = []
    for t, table in enumerate(result["throughput"]):
        for r in table["rows"]:
            cell = {"section": "throughput", "table": t, "batch_size": r["batch_size"], "input_len": r["input_len"],
                    "max_tokens": r["max_tokens"]}
            if r.get("skipped"):  # its estimate, not a measurement
                rows.append({**cell, "metric": "elapsed_s", "statistic": "skipped (estimate)",
                             "value": r["skipped"]["estimated_s"], "unit": "s"})
                continue
            for metric, unit in (("elapsed_s", "s"), ("output_tok_s", "tok/s"), ("total_tok_s", "tok/s"),
                                 ("requests_s", "req/s"), ("speedup_vs_batch1", "x"), ("linear_ratio", "x")):
                rows.append({**cell, "metric": metric, "statistic": "median" if metric == "elapsed_s" else "",
                             "value": r[metric], "unit": unit})
    lat, pre = result["latency"], result["prefill"]
    for metric in ("ttft_s", "tpot_s", "itl_s", "e2e_s", "batch_latency_s"):
        for statistic, value in lat[metric].items():
            rows.append({"section": "latency", "table": "", "batch_size": lat["batch_size"],
                         "input_len": lat["input_len"], "max_tokens": lat["output_len"], "metric": metric,
                         "statistic": statistic, "value": value, "unit": "" if statistic == "n" else "s"})
    for statistic, value in pre["latency_s"].items():
        rows.append({"section": "prefill", "table": "", "batch_size": pre["prompts"], "input_len": pre["input_len"],
                     "max_tokens": 1, "metric": "prefill_latency_s", "statistic": statistic, "value": value,
                     "unit": "" if statistic == "n" else "s"})
    mem = result["memory"]
    for metric, value, unit in (("weight_bytes", mem["weights"].get("bytes"), "B"),
                                ("peak_memory_bytes", mem["peak"].get("bytes"), "B"),
                                ("kv_cache_tokens", mem["capacity"].get("kv_cache_tokens"), "tokens"),
                                ("max_concurrency", mem["capacity"].get("max_concurrency"), "requests")):
        rows.append({"section": "memory", "table": "", "batch_size": "", "input_len": "", "max_tokens": "",
                     "metric": metric, "statistic": "", "value": value, "unit": unit})
    for metric, value in result["timings"].items():
        rows.append({"section": "timings", "table": "", "batch_size": "", "input_len": "", "max_tokens": "",
                     "metric": metric, "statistic": "", "value": value, "unit": "s"})
    return rows


def write_outputs(result: dict, outputs: dict[str, str | Path]) -> None:
    """CSV first, JSON last; each atomic. The JSON is what the report and Snakemake treat as the result."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in csv_rows(result))
    with atomic_path(outputs["csv"]) as tmp:
        tmp.write_text(buffer.getvalue(), encoding="utf-8")
    try:
        write_json(outputs["json"], result)
    except BaseException:
        Path(outputs["csv"]).unlink(missing_ok=True)
        raise
