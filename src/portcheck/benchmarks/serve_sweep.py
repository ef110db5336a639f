"""Serving load measured by `vllm bench serve` (the target environment's own), swept over load as GuideLLM's `sweep`
profile does: synchronous (concurrency 1), then throughput (every request at once), then constant Poisson rates
spaced evenly between the two measured request rates. The workload is real text: windows of the corpus, given
to `vllm bench serve` as its `custom` dataset (JSONL with a "prompt" field).

The levels run in one process of the target's interpreter (`python -m portcheck.benchmarks.serve_sweep`): each
level is `vllm bench serve`'s own argument parser and main() on the arguments its command line would carry, so vLLM
is imported once, not once per level (~15-50 s each on a shared CPU host). That process is bounded in time as a
whole; the levels it finished are kept when it is stopped. Which flags exist is read from that parser (vLLM 0.18,
0.23 and 0.32 differ): optional flags a line lacks are left out and named; a missing required one fails the sweep.

Saturation point: with the levels in order of load, the first level whose output throughput gains less than
`throughput_gain_max` over the level below while its median TTFT grows more than `ttft_growth_min` times: more
load there buys latency, not throughput."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

SERVED_MODEL_NAME = "portcheck-model"
METRICS = ("ttft", "tpot", "itl", "e2el")
# Without these the sweep cannot run; the others are optional (left out, and named, where a line lacks them).
REQUIRED_FLAGS = ("--host", "--port", "--model", "--tokenizer", "--dataset-name", "--dataset-path", "--num-prompts",
                  "--request-rate", "--max-concurrency", "--save-result", "--result-dir", "--result-filename")
RESULT_KEYS = ("completed", "failed", "duration", "request_throughput", "request_goodput", "output_throughput",
               "total_token_throughput", "total_input_tokens", "total_output_tokens", "max_concurrent_requests",
               "max_output_tokens_per_s")
FIGURE_KEY = re.compile(r"^(mean|median|std|p[0-9.]+)_(ttft|tpot|itl|e2el)_ms$|^spec_decode_")
SATURATION_RULE = ("levels in order of load; the saturation point is the first level whose output throughput gains "
                   "less than {gain:.0%} over the level below while its median TTFT grows more than {growth:g}x "
                   "(more load buys latency, not throughput); none such: not reached within the sweep")


# ---------------------------------------------------------------- the workload


def write_workload(path: Path, tokenizer, text: str, count: int, input_len: int) -> dict[str, Any]:
    """`count` windows of `input_len` tokens spread evenly over the corpus text (every part of it, the shipped one
    ends in Chinese), decoded back to text, as `vllm bench serve`'s custom dataset."""
    from portcheck.dump.corpus import cut_windows

    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) < count * input_len:
        from portcheck.errors import PortcheckError

        raise PortcheckError(f"serve.requests_per_level {count} x serve.input_len {input_len} need {count * input_len} "
                             f"corpus tokens; the corpus has {len(ids)}: lower them or give a longer corpus.file")
    prompts = [tokenizer.decode(window) for window in cut_windows(ids, input_len, count)]
    path.write_text("".join(json.dumps({"prompt": p}, ensure_ascii=False) + "\n" for p in prompts), encoding="utf-8")
    return {"prompts": count, "input_len": input_len, "corpus_tokens": len(ids),
            "first_prompt": prompts[0][:80], "last_prompt": prompts[-1][:80]}


# ---------------------------------------------------------------- the levels and their commands


def base_args(flags: dict, port: int, model_dir: str, dataset: Path, plan: dict) -> tuple[list[str], list[str]]:
    """Arguments every level shares, and the optional flags this line lacks."""
    optional = {
        "--custom-output-len": [str(plan["max_tokens"])],
        "--skip-chat-template": [],  # the corpus text as it is: no chat template around it
        "--disable-shuffle": [],
        "--ignore-eos": [],  # every request makes max_tokens tokens
        "--temperature": ["0"],  # greedy, as the parity check
        "--percentile-metrics": [",".join(METRICS)],
        "--metric-percentiles": [",".join(f"{p:g}" for p in plan["percentiles"])],
        "--goodput": [f"{name}:{value:g}" for name, value in plan["slo"].items() if value is not None],
        "--trust-remote-code": [] if plan["trust_remote_code"] else None,
        "--disable-tqdm": [],
    }
    args = ["--host", "127.0.0.1", "--port", str(port), "--model", SERVED_MODEL_NAME, "--tokenizer", str(model_dir),
            "--dataset-name", "custom", "--dataset-path", str(dataset), "--num-prompts", str(plan["requests"]),
            "--seed", str(plan["seed"])]
    missing = []
    for flag, values in optional.items():
        if values is None or (flag == "--goodput" and not values):
            continue
        if flag in flags:
            args += [flag, *values]
        else:
            missing.append(flag)
    return args, missing


def level_args(level: dict, index: int, result_dir: str, warmup: int, flags: dict) -> list[str]:
    """One level's own flags: its load, its result file, and the warm-up on the first level only."""
    args = ["--request-rate", "inf" if level["request_rate"] is None else f"{level['request_rate']:.6g}"]
    if level["max_concurrency"] is not None:
        args += ["--max-concurrency", str(level["max_concurrency"])]
    if index == 0 and warmup and "--num-warmups" in flags:
        args += ["--num-warmups", str(warmup)]  # the first requests compile kernels on some devices
    return args + ["--save-result", "--result-dir", result_dir, "--result-filename", f"level-{index}.json"]


def fixed_levels() -> list[dict]:
    return [{"name": "synchronous", "max_concurrency": 1, "request_rate": None},
            {"name": "throughput", "max_concurrency": None, "request_rate": None}]


def rates_between(synchronous_rate: float | None, throughput_rate: float | None, count: int) -> list[float]:
    """`count` constant rates spaced evenly strictly between the two measured request rates (GuideLLM's sweep);
    none when throughput did not exceed the synchronous rate."""
    if not count or not synchronous_rate or not throughput_rate or throughput_rate <= synchronous_rate:
        return []
    step = (throughput_rate - synchronous_rate) / (count + 1)
    return [synchronous_rate + step * (k + 1) for k in range(count)]


def rate_level(rate: float) -> dict:
    return {"name": f"rate {rate:.3g}/s", "max_concurrency": None, "request_rate": rate}


def load_order(levels: list[dict]) -> list[dict]:
    """Synchronous first, then the rates ascending, throughput (unbounded) last."""
    def load(level):
        if level["max_concurrency"] == 1:
            return -1.0
        return math.inf if level["request_rate"] is None else level["request_rate"]
    return sorted(levels, key=load)


def command_text(args: list[str]) -> str:
    return shlex.join(["vllm", "bench", "serve", *args])


# ---------------------------------------------------------------- results


def level_figures(result: dict) -> dict[str, Any]:
    """The saved result JSON's figures (per-request arrays left out)."""
    figures = {key: result.get(key) for key in RESULT_KEYS if key in result}
    figures.update({key: value for key, value in result.items() if FIGURE_KEY.match(key)})
    errors = [e for e in result.get("errors") or [] if e]
    if errors:
        figures["error_samples"] = sorted(set(map(str, errors)))[:3]
    return figures


def saturation(levels: list[dict], throughput_gain_max: float, ttft_growth_min: float) -> dict[str, Any]:
    """The saturation point of the measured levels (module docstring) with the figures of each step of load."""
    ordered = [level for level in load_order(levels) if level.get("output_throughput")]
    steps, point = [], None
    for below, level in zip(ordered, ordered[1:]):
        gain = level["output_throughput"] / below["output_throughput"] - 1
        ttft_below, ttft = below.get("median_ttft_ms"), level.get("median_ttft_ms")
        growth = ttft / ttft_below if ttft and ttft_below else None
        steps.append({"from": below["name"], "to": level["name"], "throughput_gain": gain, "ttft_growth": growth})
        if point is None and gain < throughput_gain_max and growth is not None and growth > ttft_growth_min:
            point = level
    best = max(ordered, key=lambda level: level["output_throughput"], default=None)
    return {
        "reached": point is not None, "level": point["name"] if point else None,
        "request_throughput": point.get("request_throughput") if point else None,
        "best_level": best["name"] if best else None,
        "best_output_throughput": best["output_throughput"] if best else None,
        "rule": SATURATION_RULE.format(gain=throughput_gain_max, growth=ttft_growth_min), "steps": steps,
    }


# ---------------------------------------------------------------- the sweep, in the target's interpreter


def bench_parser():
    """`vllm bench serve`'s argument parser, built as its CLI builds it."""
    from vllm.benchmarks.serve import add_cli_args

    try:
        from vllm.utils.argparse_utils import FlexibleArgumentParser
    except ImportError:  # older lines keep it in vllm.utils
        from vllm.utils import FlexibleArgumentParser
    parser = FlexibleArgumentParser(prog="vllm bench serve")
    add_cli_args(parser)
    return parser


def parser_flags(parser) -> dict[str, list | None]:
    """Every option string -> its choices (None where free)."""
    return {option: (list(action.choices) if action.choices else None)
            for action in parser._actions for option in action.option_strings}


def run_level(parser, args: list[str]) -> str | None:
    """One `vllm bench serve` run in this process; its error, None when it finished."""
    from vllm.benchmarks.serve import main

    try:
        main(parser.parse_args(args))
    except BaseException as exc:  # noqa: BLE001 - argparse exits, vLLM raises: the level's error either way
        if isinstance(exc, KeyboardInterrupt):
            raise
        traceback.print_exc()
        return f"{type(exc).__name__}: {exc}"[:500]
    return None


def drive(plan_path: str) -> int:
    """The sweep in order (synchronous, throughput, then the rates between), writing sweep.json after each level."""
    plan = json.loads(Path(plan_path).read_text(encoding="utf-8"))
    out = Path(plan["result_dir"])
    record: dict[str, Any] = {"levels": []}
    try:
        parser = bench_parser()
    except Exception as exc:  # noqa: BLE001 - the tool is not there: say so and stop
        record["error"] = f"vllm bench serve is not available in {sys.prefix}: {type(exc).__name__}: {exc}"
        _write(out / "sweep.json", record)
        return 3
    flags = parser_flags(parser)
    record["problem"] = flag_problem(flags)
    if record["problem"]:
        _write(out / "sweep.json", record)
        return 4
    shared, record["flags_left_out"] = base_args(flags, plan["port"], plan["model_dir"], Path(plan["dataset"]), plan)
    queue = fixed_levels()
    while queue:
        level = queue.pop(0)
        index = len(record["levels"])
        args = shared + level_args(level, index, str(out), plan["warmup"], flags)
        started = time.perf_counter()
        error = run_level(parser, args)
        record["levels"].append({**level, "args": args, "error": error, "wall_s": time.perf_counter() - started})
        _write(out / "sweep.json", record)
        if error:
            return 5
        if index == 1:
            queue += [rate_level(rate) for rate in rates_between(*_measured_rates(out), plan["rates"])]
    return 0


def flag_problem(flags: dict) -> str | None:
    missing = [flag for flag in REQUIRED_FLAGS if flag not in flags]
    if missing:
        return f"this vllm bench serve lacks {', '.join(missing)}"
    if "custom" not in (flags["--dataset-name"] or []):
        return f"this vllm bench serve has no custom dataset (its datasets: {flags['--dataset-name']})"
    if importlib.util.find_spec("pandas") is None:
        # vLLM reads a custom dataset with pandas (its `bench` extra); without it vLLM CPU 0.18 fails with an
        # unrelated "No package metadata was found for vllm" while looking up the extra's name.
        return (f"vllm bench serve's custom dataset needs pandas (vLLM's bench extra): pip install pandas in "
                f"{sys.prefix}")
    return None


def _measured_rates(out: Path) -> tuple[float | None, float | None]:
    return tuple(_read(out / f"level-{i}.json").get("request_throughput") for i in (0, 1))


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _write(path: Path, record: dict) -> None:
    path.write_text(json.dumps(record, indent=1), encoding="utf-8")


# ---------------------------------------------------------------- the sweep, from the serving check


def run_sweep(port: int, model_dir: str | Path, tokenizer, corpus_text: str, serve_config: dict,
              trust_remote_code: bool, log_path: str | Path, python: list[str] | None = None) -> dict[str, Any]:
    """The whole sweep against the server on `port`: its levels in order of load, the saturation point, and the
    tool's error (status "missing" / "failed") where it is absent or fails. Never raises for the tool's faults."""
    sweep = serve_config["sweep"]
    python = python or [sys.executable]
    with tempfile.TemporaryDirectory(prefix="portcheck-serve-") as work:
        dataset = Path(work) / "corpus.jsonl"
        workload = write_workload(dataset, tokenizer, corpus_text, serve_config["requests_per_level"],
                                  serve_config["input_len"])
        plan = {"port": port, "model_dir": str(model_dir), "dataset": str(dataset), "result_dir": work,
                "requests": serve_config["requests_per_level"], "max_tokens": serve_config["max_tokens"],
                "percentiles": serve_config["percentiles"], "seed": serve_config["seed"],
                "warmup": serve_config["warmup"], "slo": goodput_slos(serve_config["slo"]), "rates": sweep["rates"],
                "trust_remote_code": trust_remote_code}
        (Path(work) / "plan.json").write_text(json.dumps(plan), encoding="utf-8")
        started = time.perf_counter()
        timeout = _drive_in(python, Path(work) / "plan.json", log_path, sweep["max_seconds"])
        result = _collect(Path(work), sweep)
    result.update(workload=workload, wall_s=round(time.perf_counter() - started, 3), log=str(log_path),
                  python=" ".join(python))
    if timeout:
        result.update(status="failed", error=f"the sweep ran past serve.sweep.max_seconds "
                                             f"({sweep['max_seconds']:g} s) and was stopped; the levels it finished are kept")
    return result


def goodput_slos(slo: dict) -> dict[str, float | None]:
    """serve.slo (ttft_ms, tpot_ms, e2el_ms) as `--goodput`'s names (ttft, tpot, e2el; milliseconds)."""
    return {name.removesuffix("_ms"): value for name, value in slo.items()}


def _drive_in(python: list[str], plan: Path, log_path: str | Path, max_seconds: float) -> bool:
    """Run drive() in the target's interpreter, output to the log; True when it ran past max_seconds."""
    from portcheck.env.python_env import job_environment

    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        process = subprocess.Popen([*python, "-m", "portcheck.benchmarks.serve_sweep", str(plan)], stdout=log,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=job_environment({}),
                                   start_new_session=True)
        try:
            process.wait(timeout=max_seconds)
            return False
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # its own group: nothing it started outlives it
            process.wait()
            return True


def _collect(work: Path, sweep: dict) -> dict[str, Any]:
    record = _read(work / "sweep.json")
    levels = [_level_result(work, i, level) for i, level in enumerate(record.get("levels") or [])]
    error = (record.get("error") or record.get("problem") or next((l["error"] for l in levels if l["error"]), None)
             or (None if record else "the sweep process ended before it wrote anything (see its log)"))
    if error is None and any(level.get("failed") for level in levels):
        error = "some requests failed (see the levels' failed counts and error samples)"
    status = "missing" if record.get("error") else ("failed" if error else "ok")
    ordered = load_order(levels)
    return {"status": status, "error": error, "flags_left_out": record.get("flags_left_out") or [],
            "levels": ordered, "saturation": saturation(ordered, **sweep["saturation"])}


def _level_result(work: Path, index: int, level: dict) -> dict[str, Any]:
    figures = level_figures(_read(work / f"level-{index}.json"))
    return {"name": level["name"], "max_concurrency": level["max_concurrency"],
            "request_rate": level["request_rate"], "command": command_text(_shown(level["args"])),
            "error": level["error"] or (None if figures else "no result file was saved"),
            "wall_s": round(level["wall_s"], 3), **figures}


def _shown(args: list[str]) -> list[str]:
    """The command as a user reruns it: the temporary dataset and result paths named by their file names."""
    temporary = {"--dataset-path", "--result-dir"}
    return [Path(arg).name if previous in temporary else arg for previous, arg in zip([None, *args], args)]


if __name__ == "__main__":
    sys.exit(drive(sys.argv[1]))
