"""Section Performance: per target the offline benchmarks (the seed's tables plus percentiles) and the serving
check; then the roofline and the consistency flags, read from bench_checks.json (derived there, not here)."""

from __future__ import annotations

from portcheck.report.format import (
    DASH, NO, NOT_RUN, UNKNOWN, YES, bandwidth, byte_size, check_figure, decimal, flops, is_number, milliseconds,
    pct, per_second, ratio, show, speedup, table,
)
from portcheck.report.load import TargetData
from portcheck.report.sources import cite, every_target
from portcheck.targets import parse_target

LATENCY_ROWS = (("ttft_s", "TTFT (time to first token)"), ("tpot_s", "TPOT (per output token, first excluded)"),
                ("itl_s", "ITL (inter-token gaps, pooled)"), ("e2e_s", "E2E (request latency)"),
                ("batch_latency_s", "Whole-batch latency"))
FLAG_VERDICT = {True: "✅ fits", False: "❌ does not fit", None: "❔ not checkable"}
PEAKS_SOURCE = ("the peaks are theory: config hardware.<name> (memory_bandwidth_bytes_s, bf16_dense_flops, source), "
                "<name> from config targets.<target>.hardware")


def performance_section(targets: list[TargetData]) -> dict:
    flags = [(t.name, flag) for t in targets if t.bench_checks for flag in t.bench_checks["consistency"]]
    tolerances = dict.fromkeys(f"{t.bench_checks['tolerance']:.0%}" for t in targets if t.bench_checks)
    return {
        "overview": _overview(targets),
        "targets": [_target_view(t) for t in targets],
        "roofline": _roofline_table(targets),
        "consistency": _consistency_table(targets, flags),
        "tolerance": " / ".join(tolerances) or UNKNOWN,
        "flags_failed": sum(1 for _, flag in flags if flag["ok"] is False),
    }


def _overview(targets: list[TargetData]) -> dict:
    rows = []
    for t in targets:
        if t.bench is None:
            rows.append([t.name, t.not_run("bench")] + [DASH] * 6)
            continue
        mem, timings = t.bench.get("memory") or {}, t.bench.get("timings") or {}
        capacity = mem.get("capacity") or {}
        rows.append([t.name, decimal(timings.get("engine_start_s")), decimal(timings.get("weight_load_s")),
                     byte_size((mem.get("weights") or {}).get("bytes")),
                     byte_size((mem.get("peak") or {}).get("bytes")),
                     show(capacity.get("kv_cache_tokens")), show(capacity.get("max_concurrency")),
                     decimal(timings.get("total_s"))])
    source = cite(every_target(targets, "bench"), "timings.engine_start_s", "timings.weight_load_s",
                  "memory.weights.bytes", "memory.peak.bytes", "memory.capacity.kv_cache_tokens",
                  "memory.capacity.max_concurrency", "timings.total_s")
    return table(["Target", "Engine start (s)", "Weight load (s)", "Weights (text, target dtype)", "Peak memory",
                  "KV cache (tokens)", "Max concurrency", "Benchmark wall time (s)"], rows, source)


def _target_view(t: TargetData) -> dict:
    if parse_target(t.name).engine != "vllm":
        serve_reason = "the serving check starts vllm serve: vllm targets only"
    else:
        serve_reason = t.absent.get("serve", NOT_RUN)
    return {"target": t.name,
            "bench": _bench_view(t.bench, t.paths["bench"]) if t.bench else None,
            "bench_reason": t.absent.get("bench", NOT_RUN),
            "serve": _serve_view(t.serve, t.paths["serve"]) if t.serve else None, "serve_reason": serve_reason}


def _roofline_table(targets: list[TargetData]) -> dict:
    source = f"{cite(every_target(targets, 'bench_checks'), 'hardware', 'roofline')}; {PEAKS_SOURCE}"
    return table(["Target", "Hardware (source)", "Peak bandwidth", "Weight bytes / step", "Decode floor / step (ms)",
                  "Achieved TPOT p50 (ms)", "TPOT / floor", "Prefill FLOPS achieved", "Peak bf16 FLOPS",
                  "Prefill FLOPS utilisation", "Prefill run"], [_roofline_row(t) for t in targets], source)


def _roofline_row(t: TargetData) -> list[str]:
    if t.bench_checks is None:
        return [t.name, t.not_run("bench_checks")] + [DASH] * 9
    roof = t.bench_checks["roofline"]
    utilisation = roof["prefill_flops_utilisation"]
    return [t.name, _hardware_text(t), bandwidth(roof["memory_bandwidth_bytes_s"]), byte_size(roof["weight_bytes"]),
            milliseconds(roof["decode_floor_s"]), milliseconds(roof["tpot_s"]), ratio(roof["tpot_over_floor"]),
            flops(roof["prefill_achieved_flops"]), flops(roof["bf16_dense_flops"]),
            pct(utilisation) if utilisation is not None else UNKNOWN,
            f"{roof['prefill_prompts']} x {roof['prefill_input_len']} tokens"]


def _hardware_text(t: TargetData) -> str:
    """The peaks' origin; a device without configured peaks says so, its peak is never guessed."""
    hardware = t.bench_checks["hardware"]
    name, peaks = hardware["name"], hardware["peaks"]
    if name and peaks is None:
        return f"{name} (not in the hardware table: peak unknown)"
    if peaks is None:
        device = parse_target(t.name).device
        return f"peak unknown (no hardware configured for this {device} target{_seen_gpu_hint(t, device)})"
    return f"{name} ({peaks.get('source', 'no source given')})"


def _seen_gpu_hint(t: TargetData, device: str) -> str:
    """The GPU the target's environment saw, named for the user to set (a hint, never used as the peak)."""
    gpus = (t.env or {}).get("gpu") if device == "gpu" else None
    names = sorted({g.get("name") for g in gpus or [] if g.get("name")})
    if not names:
        return ""
    return f"; its environment saw {', '.join(names)}: name its entry of `hardware` in targets.{t.name}.hardware"


def _consistency_table(targets: list[TargetData], flags: list[tuple[str, dict]]) -> dict:
    return table(["Target", "Check", "Figures", "Measured", "Expected", "Relation", "Ratio", "Tolerance", "Verdict",
                  "Note"], [_flag_row(name, flag) for name, flag in flags],
                 cite(every_target(targets, "bench_checks"), "consistency", "tolerance"))


def _flag_row(target: str, flag: dict) -> list[str]:
    tolerance = f"±{flag['tolerance']:.0%}" if flag["relation"] == "≈" else f"{flag['tolerance']:.0%} slack"
    return [target, flag["check"], flag["subject"], check_figure(flag["check"], flag["measured"]),
            check_figure(flag["check"], flag["expected"]), flag["relation"], ratio(flag["ratio"]), tolerance,
            FLAG_VERDICT[flag["ok"]], flag["note"]]


def _bench_view(bench: dict, path: str) -> dict:
    latency, prefill = bench.get("latency") or {}, bench.get("prefill") or {}
    return {
        "tables": _throughput_tables(bench, path),
        "latency": _latency_table(bench, path),
        "seed_form": _seed_form_table(latency, prefill, path),
        "memory": _memory_table(bench.get("memory") or {}, path),
        "plan": _plan_text(bench.get("plan") or {}, latency, bench.get("timings") or {}),
    }


def _plan_text(plan: dict, latency: dict, timings: dict) -> str:
    budget = plan.get("cell_budget_s")  # absent from a bench.json older than the budget
    skipping = f", a cell whose runs would take over {budget:g} s skipped (bench.cell_budget_s)" if budget else ""
    return (f"prompts of {plan.get('input_len')} random token ids; grid: {plan.get('warmup')} warm-up + "
            f"{plan.get('repetitions')} timed run(s) per cell (median){skipping}; latency: batch "
            f"{latency.get('batch_size')}, {latency.get('input_len')} prompt + {latency.get('output_len')} output "
            f"tokens, {latency.get('warmup')} warm-up + {latency.get('repetitions')} timed runs "
            f"({latency.get('requests')} requests); temperature {show(plan.get('temperature'))}; engine start "
            f"{decimal(timings.get('engine_start_s'))} s, grid {decimal(timings.get('grid_s'))} s, latency runs "
            f"{decimal(timings.get('latency_runs_s'))} s")


def _throughput_tables(bench: dict, path: str) -> list[dict]:
    tables = []
    for i, grid in enumerate(bench.get("throughput") or []):
        rows = [_throughput_row(r) for r in grid.get("rows") or []]
        tables.append({"title": grid.get("title") or "throughput",
                       "table": table(["Batch size", "max_tokens", "Elapsed (s, median)", "Output tokens",
                                       "Output tok/s", "Total tok/s (prompt + output)", "Speed-up vs batch 1",
                                       "Ratio to linear"], rows, cite(path, f"throughput[{i}].rows"))})
    return tables


def _throughput_row(r: dict) -> list[str]:
    if r.get("skipped"):  # over bench.cell_budget_s: shown with its estimate, never left out
        skipped = f"skipped ({r['skipped']['reason']})"
        return [show(r.get("batch_size")), show(r.get("max_tokens")), skipped] + [DASH] * 5
    return [show(r.get("batch_size")), show(r.get("max_tokens")), decimal(r.get("elapsed_s"), 3),
            show(r.get("output_tokens")), per_second(r.get("output_tok_s")), per_second(r.get("total_tok_s")),
            speedup(r.get("speedup_vs_batch1")), ratio(r.get("linear_ratio"))]


def _latency_table(bench: dict, path: str) -> dict:
    latency, prefill = bench.get("latency") or {}, bench.get("prefill") or {}
    columns = [f"p{p:g}" for p in bench["percentiles"]] + ["mean"]

    def cells(figures: dict | None) -> list[str]:
        figures = figures or {}
        return [milliseconds(figures.get(column)) for column in columns] + [show(figures.get("n"))]

    rows = [[label] + cells(latency.get(key)) for key, label in LATENCY_ROWS]
    rows.append([f"Prefill latency ({prefill.get('prompts')} prompts x {prefill.get('input_len')} tokens)"]
                + cells(prefill.get("latency_s")))
    source = cite(path, "percentiles", *(f"latency.{key}" for key, _ in LATENCY_ROWS), "prefill.latency_s")
    return table(["Metric (ms)"] + columns + ["n"], rows, source)


def _seed_form_table(latency: dict, prefill: dict, path: str) -> dict:
    p50 = {key: (figures or {}).get("p50") for key, figures in
           (("prefill", prefill.get("latency_s")), ("ttft", latency.get("ttft_s")), ("tpot", latency.get("tpot_s")))}
    rows = [[f"Prefill latency ({prefill.get('prompts')} prompts)", milliseconds(p50["prefill"])],
            [f"Decode latency per step ({latency.get('batch_size')} prompts, TPOT p50)", milliseconds(p50["tpot"])],
            [f"Time to first token ({latency.get('batch_size')} prompts, p50)", milliseconds(p50["ttft"])]]
    source = cite(path, "prefill.latency_s.p50", "latency.tpot_s.p50", "latency.ttft_s.p50")
    return table(["Metric", "Measured (ms)"], rows, source)


def _memory_table(mem: dict, path: str) -> dict:
    weights, engine_params = mem.get("weights") or {}, mem.get("engine_parameters") or {}
    capacity, peak = mem.get("capacity") or {}, mem.get("peak") or {}
    kv_tokens = capacity.get("kv_cache_tokens")
    rows = [["Weights (text, target dtype)", byte_size(weights.get("bytes")), weights.get("source", "")],
            ["Engine parameters", byte_size(engine_params.get("bytes")), engine_params.get("source", "")],
            ["Peak memory", byte_size(peak.get("bytes")), peak.get("source", "")],
            *_memory_split_rows(peak.get("split") or {}),
            ["KV cache", f"{kv_tokens:,} tokens" if is_number(kv_tokens) else DASH, capacity.get("note", "")],
            ["Maximum concurrency", show(capacity.get("max_concurrency")),
             f"max_model_len={show(capacity.get('max_model_len'))}" if capacity.get("max_model_len") else ""]]
    source = cite(path, "memory.weights", "memory.engine_parameters", "memory.peak", "memory.capacity")
    return table(["Resource", "Usage", "Source"], rows, source)


# vLLM's start-up figures (engines/vllm/worker_extension.memory_split), the parts of a device's peak memory.
SPLIT_ROWS = (
    ("weights", "… model weights", "vLLM: model_runner.model_memory_usage"),
    ("peak_activation", "… peak activation (profiling)", "vLLM: peak_activation_memory"),
    ("non_torch", "… non-torch memory", None),
    ("kv_cache_budget", "… KV cache budget", None),
    ("kv_cache_allocated", "… KV cache allocated", "vLLM: model_runner.kv_caches (distinct storages)"),
    ("requested", "… reserved share", "vLLM: total x gpu_memory_utilization"),
    ("device_total", "… device memory", "vLLM: init_snapshot.total_memory"),
)


def _memory_split_rows(split: dict) -> list[list]:
    """The parts vLLM recorded; a part this vLLM keeps no figure for is written unknown, the rows left out where it
    recorded none (the hf engine, an older artifact)."""
    if not any(split.get(key) is not None for key, _, _ in SPLIT_ROWS):
        return []
    return [[label, byte_size(split.get(key)) if split.get(key) is not None else UNKNOWN,
             _split_source(split, key, source)] for key, label, source in SPLIT_ROWS]


def _split_source(split: dict, key: str, source: str | None) -> str:
    """A split row's source: non-torch memory and the KV cache budget name the figure they came from; the reserved
    share says when an explicit size (kv_cache_memory_bytes) sized the KV cache instead of it."""
    if key == "requested" and split.get("kv_cache_explicit"):
        return f"{source}; not what sized the KV cache: kv_cache_memory_bytes did"
    if key == "kv_cache_budget":  # an artifact from before kv_cache_budget_source read the first
        return f"vLLM: {split.get('kv_cache_budget_source') or 'available_kv_cache_memory_bytes'}"
    return source or f"vLLM: {split.get('non_torch_source') or 'not kept by this vLLM'}"


# ---------------------------------------------------------------- serving (serve.json: benchmarks/serving.py)


def _serve_view(serve: dict, path: str) -> dict:
    greedy = serve.get("greedy_check") or {}
    seed = serve.get("seed_request") or {}
    sweep = serve.get("sweep") or {}
    return {
        "sweep": _sweep_table(serve.get("levels") or [], serve.get("percentiles") or [99], path),
        "sweep_plan": _sweep_plan_text(serve, sweep),
        "sweep_error": _sweep_error_text(sweep),
        "saturation": _saturation_text(sweep.get("saturation") or {}),
        "greedy": _greedy_check_text(greedy),
        "ready": decimal(serve.get("server_ready_s")), "port": show(serve.get("port")),
        "preferred_port": show(serve.get("preferred_port")), "command": serve.get("command") or "",
        "curl": seed.get("curl") or "", "curl_ok": bool(seed.get("ok")),
        "curl_text": seed.get("text") if seed.get("ok") else f"error: {seed.get('error')}",
        "definitions": serve.get("definitions") or "",
    }


def _load_label(level: dict) -> str:
    if level.get("max_concurrency") == 1:
        return "synchronous (concurrency 1)"
    if level.get("request_rate") is None:
        return "throughput (all at once)"
    return f"{level['request_rate']:.3g} req/s (Poisson)"


def _sweep_table(levels: list[dict], percentiles: list, path: str) -> dict:
    top = f"p{max(percentiles):g}"

    def median_top(metric: str, level: dict) -> str:
        return f"{decimal(level.get(f'median_{metric}_ms'))} / {decimal(level.get(f'{top}_{metric}_ms'))}"

    rows = [[_load_label(level), f"{show(level.get('completed'))} / {show(level.get('failed'))}",
             decimal(level.get("request_throughput"), 3), per_second(level.get("output_throughput")),
             per_second(level.get("total_token_throughput")), decimal(level.get("request_goodput"), 3, DASH),
             *(median_top(metric, level) for metric in ("ttft", "tpot", "itl", "e2el"))]
            for level in levels]
    return table(["Load", "Completed / failed", "Requests/s", "Output tok/s", "Total tok/s", "Goodput (req/s)",
                  f"TTFT median / {top} (ms)", f"TPOT median / {top} (ms)", f"ITL median / {top} (ms)",
                  f"E2E median / {top} (ms)"], rows,
                 cite(path, "levels[].request_throughput", "levels[].output_throughput", "levels[].request_goodput",
                      f"levels[].median_/{top}_<ttft|tpot|itl|e2el>_ms", "slo"))


def _sweep_plan_text(serve: dict, sweep: dict) -> str:
    workload = sweep.get("workload") or {}
    slo = ", ".join(f"{name.removesuffix('_ms')} ≤ {value:g} ms" for name, value in (serve.get("slo") or {}).items()
                    if value is not None) or "none"
    left_out = sweep.get("flags_left_out") or []
    return (f"run by {sweep.get('python') or UNKNOWN}, levels in order of load (run synchronous, "
            f"throughput, then the rates between); {show(workload.get('prompts'))} requests per level of "
            f"{show(serve.get('input_len'))} corpus tokens + {show(serve.get('max_tokens'))} output tokens; goodput "
            f"SLOs: {slo}; sweep {decimal(sweep.get('wall_s'))} s"
            + (f"; flags this vLLM lacks, left out: {', '.join(left_out)}" if left_out else ""))


def _sweep_error_text(sweep: dict) -> str | None:
    if sweep.get("status") == "ok":
        return None
    what = "" if sweep.get("status") == "missing" else "vllm bench serve failed: "  # a missing one's error says so
    return f"❌ {what}{sweep.get('error')} (its output: {sweep.get('log')})"


def _saturation_text(saturation: dict) -> str:
    steps = "; ".join(f"{s['from']} → {s['to']}: throughput {s['throughput_gain']:+.0%}, median TTFT "
                      f"{ratio(s['ttft_growth'])}×" for s in saturation.get("steps") or [])
    if saturation.get("reached"):
        head = (f"Saturation point: {saturation['level']} "
                f"({decimal(saturation.get('request_throughput'), 3)} req/s served)")
    else:
        head = (f"Saturation point: not reached within the sweep (highest output throughput: "
                f"{show(saturation.get('best_level'))}, {per_second(saturation.get('best_output_throughput'))} tok/s)")
    return f"{head}. Rule: {saturation.get('rule') or UNKNOWN}. Steps: {steps or DASH}"


def _greedy_check_text(greedy: dict) -> str:
    if greedy.get("status") == "not determined":
        return f"❔ not determined: {greedy.get('reason')}"
    return (f"{YES if greedy.get('status') == 'ok' else NO} {show(greedy.get('equal'))}/"
            f"{len(greedy.get('prompts') or [])} greedy completions through the server equal the offline engine's "
            f"greedy tokens ({show(greedy.get('offline_target'))} dump)")
