"""make bench-real-shape: the workflow on a checkpoint of Qwen3.5-0.8B's full shape, its costs printed as figures.

Builds (once, kept in resources/bench/real-shape) the real text shape (24 layers, hidden 1024, 248,320 ids) with
the real 12-block vision tower and the MTP head, random weights (scripts/bench_compact.py's builder), then runs the
workflow on it in a fresh copy with `model.source: local` and the user's top-20 log-probs for cpu-vllm-bf16, and
prints each job's wall time (from Snakemake's log: 1-second resolution, engine start included), each stage's
total, and the stages inside the dumps (scripts/bench_workflow.py). Nothing is asserted.

    python scripts/bench_real_shape.py [--goal report] [--cores 2] [--keep DIR] [--set key=value ...]

--goal takes Snakemake targets (files or rules); e.g. the vision comparisons alone:
    --goal results/real-shape/compare/cpu-vllm-bf16.vision.json results/real-shape/compare/cpu-hf-bf16.vision.json
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from bench_compact import REAL_VISION, write_real_shape_checkpoint  # noqa: E402
from bench_workflow import copy_workflow, stage_costs  # noqa: E402

CHECKPOINT = ROOT / "resources" / "bench" / "real-shape"
MODEL = "real-shape"
STAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$")


def config(model_dir: Path, overrides: list[str]) -> dict:
    """The default config on the checkpoint, with the user's top-20 log-probs on cpu-vllm-bf16; key=value overrides
    (dotted keys, YAML values) on top."""
    settings = {"model": {"name": MODEL, "source": "local", "path": str(model_dir)},
                "targets": {"cpu-vllm-bf16": {"logprobs_topk": 20}}}
    for item in overrides:
        key, _, value = item.partition("=")
        node = settings
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    return settings


def job_times(log: str) -> list[tuple[str, str, float]]:
    """(rule, wildcards, seconds) of each finished job, from the timestamps Snakemake prints before each job's start
    and each "Finished jobid" line (a job's block names its jobid before its wildcards)."""
    now, rule, job, started, names, done = None, None, None, {}, {}, []
    for line in log.splitlines():
        text = line.strip()
        stamp = STAMP.match(text)
        if stamp:
            now = time.mktime(time.strptime(stamp.group(1), "%a %b %d %H:%M:%S %Y"))
        elif text.startswith(("rule ", "localrule ")) and text.endswith(":"):
            rule, job = text.split()[1].rstrip(":"), None
        elif rule and text.startswith("jobid:"):
            job = text.split(":", 1)[1].strip()
            started[job], names[job] = now, [rule, ""]
        elif job and text.startswith("wildcards:"):
            names[job][1] = text.split(":", 1)[1].strip()
        elif text.startswith("Finished jobid:"):
            finished = text.split(":", 1)[1].split()[0]
            if finished in started:
                done.append((*names[finished], now - started[finished]))
    return done


def vision_costs(workdir: Path) -> list[str]:
    """Each target's image prompts: the verdict, its KLD against the floor's, and the tower's and first token's
    median time per prompt."""
    import json

    def median_ms(values):
        known = sorted(v for v in values or [] if v is not None)
        return f"{1000 * known[len(known) // 2]:.0f} ms" if known else "—"

    lines = []
    for path in sorted((workdir / "results").glob("*/compare/*.vision.json")):
        c = json.loads(path.read_text())
        if "tower" not in c:
            lines.append(f"{path.name}: {c['status']} ({c.get('reason', '')})")
            continue
        tower, floor = c["tower"]["target"], c.get("vs_floor") or {}
        ratio = f"{floor['ratio']:.3g}x" if floor.get("ratio") else "—"
        lines.append(f"{path.name}: {c['status']}, KLD {c['text']['kld_mean']:.3g} ({ratio} the "
                     f"floor), {tower['blocks']} blocks, encode {median_ms(tower['encode_seconds'])}, first token "
                     f"{median_ms(tower.get('first_token_seconds'))} per prompt, job's run {tower['run_seconds']} s")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--goal", nargs="+", default=["report"])
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--keep", type=Path, help="run in this folder and keep it (default: a temporary one)")
    parser.add_argument("--set", nargs="*", default=[], help="config overrides, dotted key=value")
    args = parser.parse_args()
    started = time.perf_counter()
    model_dir = write_real_shape_checkpoint(CHECKPOINT, 0, REAL_VISION)
    print(f"checkpoint {model_dir} ready in {time.perf_counter() - started:.1f} s", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = copy_workflow(args.keep or Path(tmp) / "portcheck")
        (workdir / "real-shape.yaml").write_text(yaml.safe_dump(config(model_dir, args.set)))
        started = time.perf_counter()
        # the targets first: --configfile takes every argument after it
        run = subprocess.run([sys.executable, "-m", "snakemake", *args.goal, "--cores", str(args.cores),
                              "--configfile", "real-shape.yaml"], cwd=workdir, capture_output=True, text=True)
        wall = time.perf_counter() - started
        log = run.stdout + run.stderr
        (workdir / "bench-real-shape.log").write_text(log)
        jobs = job_times(log)
        stages = stage_costs(workdir) + vision_costs(workdir)
    print(f"workflow {' '.join(args.goal)}: exit {run.returncode}, {wall:.0f} s wall on {args.cores} cores, "
          f"{len(jobs)} jobs")
    totals = defaultdict(float)
    for rule, wildcards, seconds in sorted(jobs, key=lambda job: -job[2]):
        totals[rule] += seconds
        print(f"  {seconds:7.0f} s  {rule} {wildcards}")
    print("per rule (job seconds summed):")
    for rule, seconds in sorted(totals.items(), key=lambda item: -item[1]):
        print(f"  {seconds:7.0f} s  {rule}")
    print("inside the dumps:")
    for line in stages:
        print("  " + line)
    if run.returncode:
        print(log[-3000:])
        sys.exit(run.returncode)


if __name__ == "__main__":
    main()
