"""Accuracy of the benchmark harness (make bench-harness): figures printed, nothing asserted.

1. vLLM: this workflow's throughput measurement (portcheck.benchmarks.offline on Engine.timed_generate) against
   `vllm bench throughput` on cpu-vllm-bf16 with identical settings (engine arguments, prompt and output lengths,
   number of prompts, sampling temperature 1.0 as vllm bench uses, EOS ignored). Goal: ratio within 5%.
2. hf: the harness's output tokens/s against a bare loop of the same model.generate calls on the same model.
   Goal: ratio within 5%.

Each vLLM side starts its own engine (~1 min each on a 2-core host).

    python scripts/bench_harness.py [--num-prompts 32 --input-len 32 --output-len 64 --repetitions 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def model_dir() -> Path:
    built = ROOT / "resources" / "models" / "tiny-qwen3.5"
    if (built / "config.json").is_file():
        return built
    from portcheck.model.acquire import fetch_model

    return fetch_model("tiny", Path(tempfile.mkdtemp(prefix="portcheck-harness-")) / "model", seed=0)


def target_settings(target: str):
    import yaml

    from portcheck.config import engine_settings, load_schema, validate_config

    config = validate_config(yaml.safe_load((ROOT / "config" / "config.yaml").read_text()),
                             load_schema(ROOT / "config" / "schema.yaml"), base_dir=ROOT)
    settings = engine_settings(config, target)
    settings.threads = settings.threads or len(os.sched_getaffinity(0))
    return settings


def vllm_bench_throughput(model: Path, settings, args) -> dict:
    from portcheck.benchmarks.serving import vllm_executable
    from portcheck.engines.vllm.engine_args import CPU_DEFAULT_GPU_MEMORY_UTILIZATION

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "throughput.json"
        command = vllm_executable() + [
            "bench", "throughput", "--model", str(model), "--dtype", "bfloat16", "--seed", str(settings.seed),
            "--max-model-len", str(settings.max_model_len), "--enforce-eager", "--language-model-only",
            "--no-enable-prefix-caching",
            "--gpu-memory-utilization", str(settings.gpu_memory_utilization or CPU_DEFAULT_GPU_MEMORY_UTILIZATION),
            "--dataset-name", "random", "--random-input-len", str(args.input_len),
            "--random-output-len", str(args.output_len),
            "--num-prompts", str(args.num_prompts), "--output-json", str(out),
        ]
        env = {**os.environ,
               "VLLM_CPU_OMP_THREADS_BIND": ",".join(map(str, sorted(os.sched_getaffinity(0))[: settings.threads]))}
        started = time.perf_counter()
        run = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1800)
        if run.returncode != 0:
            sys.exit(f"vllm bench throughput failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}")
        result = json.loads(out.read_text())
        result["wall_s"] = time.perf_counter() - started
        result["output_tok_s"] = result["num_requests"] * args.output_len / result["elapsed_time"]
        # vllm's random dataset decodes random ids to text and re-encodes them (special tokens may be added):
        # the mean prompt length it ended up with is what our side uses.
        result["mean_prompt_len"] = (result["total_num_tokens"] / result["num_requests"]) - args.output_len
        return result


def harness_vllm(model: Path, settings, args, input_len: int) -> dict:
    from portcheck.benchmarks.workload import random_prompts
    from portcheck.engines.factory import make_engine
    from portcheck.dump.run import load_tokenizer
    from portcheck.targets import parse_target

    prompts = random_prompts(load_tokenizer(model), args.num_prompts, input_len, seed=0)
    with make_engine(parse_target("cpu-vllm-bf16"), model, settings) as engine:
        # vllm bench throughput times one pass right after the engine start: the first figure matches it;
        # the median after that first pass is what the workflow's tables use (warm-up, then repetitions).
        # no per-request seed: vllm bench sets none (and vLLM's CPU sampler rejects seeded requests)
        walls = [engine.timed_generate(prompts, args.output_len, temperature=1.0, seed=None)[0]
                 for _ in range(1 + args.repetitions)]
    tokens = args.num_prompts * args.output_len
    return {"first_output_tok_s": tokens / walls[0], "median_output_tok_s": tokens / statistics.median(walls[1:]),
            "walls": walls}


def harness_hf(model: Path, args) -> dict:
    import torch

    from portcheck.benchmarks.offline import measure_grid
    from portcheck.benchmarks.workload import random_prompts
    from portcheck.engines.factory import make_engine
    from portcheck.dump.run import load_tokenizer
    from portcheck.targets import parse_target

    settings = target_settings("cpu-hf-bf16")
    batch, max_tokens = args.hf_batch, args.hf_max_tokens
    prompts = random_prompts(load_tokenizer(model), batch, args.input_len, seed=0)
    plan = {"grid": [{"batch_sizes": [batch], "max_tokens": [max_tokens]}], "input_len": args.input_len,
            "warmup": 1, "repetitions": args.repetitions, "temperature": 0.0, "seed": 0}
    with make_engine(parse_target("cpu-hf-bf16"), model, settings) as engine:
        harness = measure_grid(engine, prompts, plan, progress=lambda _: None)[0]["rows"][0]["output_tok_s"]
        model_obj = engine.model
        pad = engine._pad_id()
        input_ids = torch.tensor(prompts)
        mask = torch.ones_like(input_ids)

        def bare():
            started = time.perf_counter()
            with torch.inference_mode():
                model_obj.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=max_tokens,
                                   min_new_tokens=max_tokens, do_sample=False, pad_token_id=pad)
            return time.perf_counter() - started

        bare()  # warm-up, as the harness
        walls = [bare() for _ in range(args.repetitions)]
        # the harness once more, so that neither side always runs on a warmer (or more contended) machine
        harness_again = measure_grid(engine, prompts, plan, progress=lambda _: None)[0]["rows"][0]["output_tok_s"]
    return {"harness_output_tok_s": statistics.median([harness, harness_again]),
            "bare_output_tok_s": batch * max_tokens / statistics.median(walls)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-prompts", type=int, default=32)
    parser.add_argument("--input-len", type=int, default=32)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--hf-batch", type=int, default=8)
    parser.add_argument("--hf-max-tokens", type=int, default=50)
    parser.add_argument("--max-model-len", type=int, default=512)
    parser.add_argument("--skip-vllm", action="store_true")
    args = parser.parse_args()
    model = model_dir()
    print(f"model: {model}")
    print("\n== hf (cpu-hf-bf16): harness vs bare model.generate loop, "
          f"batch {args.hf_batch} x {args.input_len} prompt + {args.hf_max_tokens} output tokens ==")
    hf = harness_hf(model, args)
    ratio = hf["harness_output_tok_s"] / hf["bare_output_tok_s"]
    print(f"harness   {hf['harness_output_tok_s']:10.1f} output tok/s")
    print(f"bare loop {hf['bare_output_tok_s']:10.1f} output tok/s")
    print(f"ratio     {ratio:10.3f}  ({'within' if abs(ratio - 1) <= 0.05 else 'OUTSIDE'} 5%)")
    if args.skip_vllm:
        return
    settings = target_settings("cpu-vllm-bf16")
    settings.max_model_len = max(settings.max_model_len or 0, args.max_model_len)
    print(f"\n== vllm (cpu-vllm-bf16): this workflow vs `vllm bench throughput`, {args.num_prompts} prompts x "
          f"{args.input_len} + {args.output_len} tokens, temperature 1.0, EOS ignored, max_model_len "
          f"{settings.max_model_len} ==")
    theirs = vllm_bench_throughput(model, settings, args)
    input_len = max(1, round(theirs["mean_prompt_len"]))
    print(f"vllm bench's random prompts came out at {theirs['mean_prompt_len']:.1f} tokens on average "
          f"(asked {args.input_len}); portcheck uses {input_len}")
    ours = harness_vllm(model, settings, args, input_len)
    first = ours["first_output_tok_s"] / theirs["output_tok_s"]
    median = ours["median_output_tok_s"] / theirs["output_tok_s"]
    print(f"vllm bench throughput      {theirs['output_tok_s']:10.1f} output tok/s "
          f"({theirs['tokens_per_second']:.1f} total tok/s, {theirs['requests_per_second']:.2f} req/s, "
          f"one pass of {theirs['elapsed_time']:.2f} s)")
    print(f"portcheck, first pass      {ours['first_output_tok_s']:10.1f} output tok/s   ratio {first:.3f} "
          f"({'within' if abs(first - 1) <= 0.05 else 'OUTSIDE'} 5%)  <- same protocol as vllm bench")
    print(f"portcheck, median of {args.repetitions}    {ours['median_output_tok_s']:10.1f} output tok/s   "
          f"ratio {median:.3f}  (after a warm-up pass, as the workflow's tables)")


if __name__ == "__main__":
    main()
