"""make bench-real-shape: the workflow on a checkpoint of Qwen3.5-0.8B's full shape, its costs printed as figures.

Builds (once, kept in resources/bench/real-shape) the real text shape (24 layers, hidden 1024, 248,320 ids) with
the real 12-block vision tower and the MTP head, random weights (scripts/bench_compact.py's builder), then runs the
workflow on it in a fresh copy with `model.source: local` and the user's top-20 log-probs for cpu-vllm-bf16, and
prints each job's wall time (from Snakemake's log: 1-second resolution, engine start included) and the run's peak
resident memory while it ran (the whole process tree sampled every second: jobs running alongside are included),
each rule's total, and the stages inside the dumps (scripts/bench_workflow.py). Nothing is asserted.

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


def job_times(log: str) -> list[dict]:
    """Each finished job's rule, wildcards, start and end (epoch seconds), from the timestamps Snakemake prints
    before each job's start and each "Finished jobid" line (a job's block names its jobid before its wildcards)."""
    now, rule, job, jobs, done = None, None, None, {}, []
    for line in log.splitlines():
        text = line.strip()
        stamp = STAMP.match(text)
        if stamp:
            now = time.mktime(time.strptime(stamp.group(1), "%a %b %d %H:%M:%S %Y"))
        elif text.startswith(("rule ", "localrule ")) and text.endswith(":"):
            rule, job = text.split()[1].rstrip(":"), None
        elif rule and text.startswith("jobid:"):
            job = text.split(":", 1)[1].strip()
            jobs[job] = {"rule": rule, "wildcards": "", "start": now}
        elif job and text.startswith("wildcards:"):
            jobs[job]["wildcards"] = text.split(":", 1)[1].strip()
        elif text.startswith("Finished jobid:"):
            finished = jobs.get(text.split(":", 1)[1].split()[0])
            if finished:
                done.append({**finished, "end": now})
    return done


def run_sampled(command: list[str], cwd: Path, every: float = 1.0) -> tuple[subprocess.CompletedProcess, list]:
    """Run the command and sample the resident memory of its whole process tree (engines' workers included) every
    `every` seconds: (the finished process, [(epoch seconds, bytes)])."""
    import psutil

    samples = []
    with subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        reader = _drain(proc.stdout)
        root = psutil.Process(proc.pid)
        while proc.poll() is None:
            samples.append((time.time(), _tree_rss(root)))
            time.sleep(every)
        output = reader()
    return subprocess.CompletedProcess(command, proc.returncode, output, ""), samples


def _drain(stream):
    """Read a pipe in a thread (a full pipe would stall Snakemake); the returned function joins and gives the text."""
    import threading

    chunks = []
    thread = threading.Thread(target=lambda: chunks.extend(stream), daemon=True)
    thread.start()
    return lambda: (thread.join(), "".join(chunks))[1]


def _tree_rss(root) -> int:
    import psutil

    total = 0
    try:
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    for process in processes:
        try:
            total += process.memory_info().rss
        except psutil.Error:  # exited between the listing and the read
            pass
    return total


def peak_during(samples: list, start: float, end: float) -> int | None:
    """The largest sample in [start, end + 1) (the log's stamps are whole seconds); None where none fell in it."""
    inside = [rss for at, rss in samples if start <= at < end + 1]
    return max(inside) if inside else None


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


def print_jobs(args, returncode: int, wall: float, jobs: list[dict], samples: list) -> None:
    peak = max((rss for _, rss in samples), default=0)
    print(f"workflow {' '.join(args.goal)}: exit {returncode}, {wall:.0f} s wall on {args.cores} cores, "
          f"{len(jobs)} jobs, peak resident memory {peak / 2**30:.1f} GiB (every process of the run)")
    print("per job: wall time, and the run's peak resident memory while it ran (jobs alongside it included):")
    totals = defaultdict(float)
    for job in sorted(jobs, key=lambda job: job["start"] - job["end"]):
        seconds, rss = job["end"] - job["start"], peak_during(samples, job["start"], job["end"])
        totals[job["rule"]] += seconds
        memory = f"{rss / 2**30:5.1f} GiB" if rss else "    — GiB"
        print(f"  {seconds:7.0f} s  {memory}  {job['rule']} {job['wildcards']}", flush=True)
    print("per rule (job seconds summed):")
    for rule, seconds in sorted(totals.items(), key=lambda item: -item[1]):
        print(f"  {seconds:7.0f} s  {rule}", flush=True)


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
        run, samples = run_sampled([sys.executable, "-m", "snakemake", *args.goal, "--cores", str(args.cores),
                                    "--configfile", "real-shape.yaml"], workdir)
        wall = time.perf_counter() - started
        log = run.stdout
        (workdir / "bench-real-shape.log").write_text(log)
        # the job figures first: they stand even where reading the dumps' stages fails
        print_jobs(args, run.returncode, wall, job_times(log), samples)
        print("inside the dumps:")
        for line in stage_costs(workdir) + vision_costs(workdir):
            print("  " + line)
    if run.returncode:
        print(log[-3000:])
        sys.exit(run.returncode)


if __name__ == "__main__":
    main()
