"""Offline benchmarks of one target, with one engine start: the throughput grid (the seed's two tables by
default), latency percentiles (TTFT, TPOT, ITL, E2E, after warm-up), prefill latency, memory, engine start and
weight-load time. Every engine and device runs this same code through Engine.timed_generate.

Prompts are random token ids of a fixed length (as vLLM's benchmark tools do), so results compare across devices.
The grid is checked against the engine's limits before the engine starts, and bench.json / bench.csv are written
atomically at the very end: an interrupted run leaves no artifact that looks complete."""

from __future__ import annotations

import copy
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
from portcheck.benchmarks.workload import random_prompts
from portcheck.model.checkpoint import text_settings
from portcheck.targets import parse_target

log = logging.getLogger("portcheck.bench")
# vLLM's default max_num_seqs for the offline LLM class when none is configured (EngineArgs, usage LLM_CLASS).
VLLM_DEFAULT_MAX_NUM_SEQS = 256
SCHEMA_VERSION = 1


# ---------------------------------------------------------------- plan


def plan_for_device(bench_config: dict, device: str) -> dict:
    """The bench config with the device's overrides (bench.overrides.<device>) merged in, one level deep."""
    plan = copy.deepcopy({k: v for k, v in bench_config.items() if k != "overrides"})
    for key, value in ((bench_config.get("overrides") or {}).get(device) or {}).items():
        if isinstance(value, dict) and isinstance(plan.get(key), dict):
            plan[key] = {**plan[key], **value}
        else:
            plan[key] = copy.deepcopy(value)
    return plan


def grid_cells(plan: dict) -> list[tuple[int, int]]:
    """Distinct (batch, max_tokens) cells of every table, in table order (a cell shared by two tables runs once)."""
    cells: list[tuple[int, int]] = []
    for table in plan["grid"]:
        for batch in table["batch_sizes"]:
            for max_tokens in table["max_tokens"]:
                if (batch, max_tokens) not in cells:
                    cells.append((int(batch), int(max_tokens)))
    return cells


def engine_limits(engine: str, settings, model_config: dict) -> dict[str, Any]:
    """max_model_len and max_num_seqs the engine will enforce, known before it starts."""
    text = text_settings(model_config)
    max_len = settings.max_model_len or text.get("max_position_embeddings")
    seqs = settings.max_num_seqs or (VLLM_DEFAULT_MAX_NUM_SEQS if engine == "vllm" else None)
    return {"max_model_len": max_len, "max_num_seqs": seqs}


def check_plan(plan: dict, limits: dict, target: str) -> None:
    """Reject, before any engine start, a grid or latency entry the engine would refuse or cut."""
    problems = []
    runs = [(f"throughput grid cell batch {b} x max_tokens {m}", b, plan["input_len"], m) for b, m in grid_cells(plan)]
    lat = plan["latency"]
    runs.append((f"latency batch {lat['batch_size']}", lat["batch_size"], lat["input_len"], lat["output_len"]))
    runs.append((f"prefill {lat['prefill_prompts']} prompts", lat["prefill_prompts"], lat["input_len"], 1))
    for what, batch, input_len, new_tokens in runs:
        if limits.get("max_num_seqs") and batch > limits["max_num_seqs"]:
            problems.append(f"{what}: batch {batch} > max_num_seqs {limits['max_num_seqs']} (the engine would "
                            "queue the excess and the timing would not be of that batch)")
        if limits.get("max_model_len") and input_len + new_tokens > limits["max_model_len"]:
            problems.append(f"{what}: prompt {input_len} + {new_tokens} new tokens = {input_len + new_tokens} > "
                            f"max_model_len {limits['max_model_len']}")
    if problems:
        raise PortcheckError(
            f"the benchmark plan for {target} does not fit the engine: " + "; ".join(problems)
            + "; shrink bench.grid / bench.latency (or bench.overrides) or raise the target's max_num_seqs / "
            "max_model_len"
        )


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
    """Median wall time of every grid cell over `repetitions` runs after `warmup` runs of the same cell."""
    cells = {}
    for batch, max_tokens in grid_cells(plan):
        batch_prompts = prompts[:batch]
        for _ in range(plan["warmup"]):
            _timed(engine, batch_prompts, max_tokens, plan)
        walls = [_timed(engine, batch_prompts, max_tokens, plan)[0] for _ in range(plan["repetitions"])]
        row = perf.throughput_row(batch, plan["input_len"], max_tokens, statistics.median(walls))
        row["elapsed_s_runs"] = walls
        cells[(batch, max_tokens)] = row
        progress(f"grid batch {batch} x max_tokens {max_tokens}: {row['output_tok_s']:.1f} output tok/s")
    tables = []
    for table in plan["grid"]:
        rows = [dict(cells[(b, m)]) for b in table["batch_sizes"] for m in table["max_tokens"]]
        tables.append({"title": table.get("title") or "", "rows": perf.add_scaling(rows)})
    return tables


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
    result = {
        "schema": SCHEMA_VERSION, "target": target_name, "device": target.device, "engine": target.engine,
        "dtype": target.dtype, "plan": plan, "limits": limits, "prompt_source": "random token ids (special ids "
        "excluded), fixed length, numpy default_rng(seed)", "percentiles": percentiles,
        "throughput": throughput, "latency": latency, "prefill": prefill, "memory": memory, "timings": timings,
    }
    write_outputs(result, outputs)
    return result


# ---------------------------------------------------------------- artifacts


CSV_COLUMNS = ["section", "table", "batch_size", "input_len", "max_tokens", "metric", "statistic", "value", "unit"]


def csv_rows(result: dict) -> list[dict]:
    """bench.json flattened to long-format rows: one measured figure per row."""
    rows = []
    for t, table in enumerate(result["throughput"]):
        for r in table["rows"]:
            for metric, unit in (("elapsed_s", "s"), ("output_tok_s", "tok/s"), ("total_tok_s", "tok/s"),
                                 ("requests_s", "req/s"), ("speedup_vs_batch1", "x"), ("linear_ratio", "x")):
                rows.append({"section": "throughput", "table": t, "batch_size": r["batch_size"],
                             "input_len": r["input_len"], "max_tokens": r["max_tokens"], "metric": metric,
                             "statistic": "median" if metric == "elapsed_s" else "", "value": r[metric], "unit": unit})
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
