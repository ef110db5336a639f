"""What the offline benchmarks run: which targets are benchmarked, the settings a measurement reads, each device's
plan (bench.overrides merged in), its grid cells, and the checks that refuse a plan the engine would refuse or cut
(at config validation where the limit is configured, again before the engine starts with the model's own limits).
No engine code and no numpy: config.py and the rules import it (a no-op run pays every import)."""

from __future__ import annotations

import copy
from typing import Any

from portcheck.errors import PortcheckError
from portcheck.model.checkpoint import text_settings
from portcheck.targets import parse_target, references_off

# vLLM's default max_num_seqs for the offline LLM class when none is configured (EngineArgs, usage LLM_CLASS).
VLLM_DEFAULT_MAX_NUM_SEQS = 256


# ---------------------------------------------------------------- which targets


def benched_targets(targets: list[str], reference: str, bench_config: dict) -> list[str]:
    """The targets whose offline benchmarks run: every one, the reference only where bench.reference is true and
    the bf16 floor (FLOOR_TARGET, when it is not the reference) only where bench.floor is true."""
    off = not_benchmarked(targets, reference, bench_config)
    return [t for t in targets if t not in off]


def not_benchmarked(targets: list[str], reference: str, bench_config: dict) -> dict[str, str]:
    """{target: the setting that turns its benchmarks off}, for the report to say so instead of "absent"."""
    return references_off(targets, reference, "bench", bench_config)


# ---------------------------------------------------------------- what a measurement reads

# Settings that only the checks or the report read, or that choose which targets are benchmarked: no measurement
# reruns for them.
NOT_MEASURED = ("consistency_tolerance", "reference", "floor")


def bench_params(config: dict, target_name: str, stack: dict) -> dict[str, Any]:
    """Rule run_benchmarks' params.measured for one target (the dump job rebuilds them to measure the target on
    its own engine and hand the record over: portcheck.workflow.handoff)."""
    from portcheck.config import engine_settings

    return {"settings": vars(engine_settings(config, target_name)),
            "bench": {key: value for key, value in config["bench"].items() if key not in NOT_MEASURED},
            "stack": stack}


# ---------------------------------------------------------------- the plan


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


def _plan_runs(plan: dict) -> list[tuple[str, int, str, int]]:
    """(what, batch, tokens as the settings name them, tokens) of every run the plan makes."""
    lat, input_len = plan["latency"], plan["input_len"]
    runs = [(f"bench.grid cell batch {b} x max_tokens {m}", b, f"bench.input_len {input_len} + max_tokens {m}",
             input_len + m) for b, m in grid_cells(plan)]
    runs.append((f"bench.latency batch {lat['batch_size']}", lat["batch_size"],
                 f"bench.latency.input_len {lat['input_len']} + output_len {lat['output_len']}",
                 lat["input_len"] + lat["output_len"]))
    runs.append((f"bench.latency.prefill_prompts {lat['prefill_prompts']}", lat["prefill_prompts"],
                 f"bench.latency.input_len {lat['input_len']} + 1", lat["input_len"] + 1))
    return runs


def plan_problems(plan: dict, limits: dict, limit_prefix: str = "") -> list[str]:
    """The runs of the plan the engine would refuse or cut. limit_prefix names where the limits are set (e.g.
    "targets.cpu-vllm-bf16.")."""
    problems = []
    max_seqs, max_len = limits.get("max_num_seqs"), limits.get("max_model_len")
    for what, batch, tokens_named, tokens in _plan_runs(plan):
        if max_seqs and batch > max_seqs:
            problems.append(f"{what}: batch {batch} > {limit_prefix}max_num_seqs {max_seqs} (the engine would "
                            "queue the excess and the timing would not be of that batch)")
        if max_len and tokens > max_len:
            problems.append(f"{what}: {tokens_named} = {tokens} > {limit_prefix}max_model_len {max_len}")
    return problems


def check_plan(plan: dict, limits: dict, target: str) -> None:
    """Reject, before any engine start, a grid or latency entry the engine would refuse or cut."""
    problems = plan_problems(plan, limits)
    if problems:
        raise PortcheckError(
            f"the benchmark plan for {target} does not fit the engine: " + "; ".join(problems)
            + "; shrink bench.grid / bench.latency (or bench.overrides) or raise the target's max_num_seqs / "
            "max_model_len"
        )


# ---------------------------------------------------------------- config validation


def _budget_problem(plan: dict, device: str, overrides: dict) -> str | None:
    """bench.cell_budget_s (the schema checks it; an override bypasses the schema) must be a positive number."""
    budget = plan["cell_budget_s"]
    if not isinstance(budget, bool) and isinstance(budget, (int, float)) and budget > 0:
        return None
    where = f"bench.overrides.{device}.cell_budget_s" if "cell_budget_s" in overrides else "bench.cell_budget_s"
    return f"{where} must be a positive number of seconds (a grid cell's time budget), got {budget!r}"


def bench_problems(config: dict) -> list[str]:
    """Every benchmarked target's plan must fit the limits its config sets (an engine start costs minutes; a null
    max_model_len is the model's own, checked before the engine starts)."""
    problems = []
    targets = [name for name, target in config["targets"].items() if target["enabled"]]
    for name in benched_targets(targets, config["reference"], config["bench"]):
        device = parse_target(name).device
        overrides = (config["bench"].get("overrides") or {}).get(device) or {}
        plan = plan_for_device(config["bench"], device)
        budget = _budget_problem(plan, device, overrides)
        problems += [budget] if budget else []
        applied = f" (with bench.overrides.{device})" if overrides else ""
        limits = {key: config["targets"][name][key] for key in ("max_model_len", "max_num_seqs")}
        problems += [f"benchmarks of {name}{applied}: {problem}; shrink the benchmark or raise the limit"
                     for problem in plan_problems(plan, limits, f"targets.{name}.")]
    return list(dict.fromkeys(problems))
