"""make bench-workflow: the workflow's own costs on the embedded default, printed as figures.

  cold run        full `report` in a fresh copy (after set-up)          goal <= 6 min on 2 cores
  no-op rerun     `report` with everything up to date, vs a one-rule   goal ratio <= 1.3
                  Snakemake workflow's no-op (medians, the two interleaved)
  template rerun  `report` after editing only the template             goal <= 2x the no-op

  python scripts/bench_workflow.py [--configfile .test/config.yaml]   (another config: e.g. CI's, no vLLM)
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COPY = ("Snakefile", "rules", "workflow", "config", "reports/templates", "src")
TRIVIAL = 'rule all:\n    input: "a.txt"\n\nrule make_a:\n    output: "a.txt"\n    shell: "echo a > {output}"\n'
REPEATS = 3
NOOP_REPEATS = 7  # a no-op is ~1 s, and the ratio of two such medians moves by a few hundredths between runs


def timed(workdir: Path, cores: int = 2, extra: tuple[str, ...] = ()) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "snakemake", "--cores", str(cores), "--directory", str(workdir),
                    "--snakefile", str(workdir / "Snakefile"), *(["report"] if (workdir / "rules").exists() else []),
                    *extra], check=True, capture_output=True)
    return time.perf_counter() - start


def copy_workflow(dest: Path) -> Path:
    for name in COPY:
        source = ROOT / name
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if source.is_dir() else shutil.copy2)(source, target)
    return dest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configfile", help="a config merged over config/config.yaml (snakemake --configfile)")
    args = parser.parse_args()
    extra = ("--configfile", str(Path(args.configfile).resolve())) if args.configfile else ()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = copy_workflow(Path(tmp) / "portcheck")
        trivial = Path(tmp) / "trivial"
        trivial.mkdir()
        (trivial / "Snakefile").write_text(TRIVIAL)
        cold = timed(workdir, extra=extra)
        stages = stage_costs(workdir)
        timed(trivial)
        pairs = [(timed(workdir, extra=extra), timed(trivial)) for _ in range(NOOP_REPEATS)]
        noop, trivial_noop = (statistics.median(times) for times in zip(*pairs))
        template = workdir / "reports" / "templates" / "report.md.j2"
        renders = []
        for index in range(REPEATS):
            time.sleep(1)
            template.write_text(template.read_text() + f"\n<!-- bench {index} -->\n")
            renders.append(timed(workdir, extra=extra))
        render = statistics.median(renders)
    print(f"cold run (report, 2 cores):     {cold:7.1f} s   goal <= 360 s")
    print(f"no-op rerun:                    {noop:7.2f} s")
    print(f"trivial workflow no-op:         {trivial_noop:7.2f} s")
    print(f"no-op ratio:                    {noop / trivial_noop:7.2f}     goal <= 1.3")
    print(f"template-only rerun:            {render:7.2f} s")
    print(f"template rerun / no-op:         {render / noop:7.2f}     goal <= 2")
    print("precision stages inside the cold run (seconds from each dump's metadata; bytes per scored position):")
    for line in stages:
        print("  " + line)


def stage_costs(workdir: Path) -> list[str]:
    """Per target: its dump's engine session and each stage inside it (the dump's stage_seconds: engine start, seed
    prompts, greedy, handovers, determinism, samples, corpus, decode, mode workload, layers), the reference's scoring
    of the decoded tokens, and the corpus dump's bytes per position (full vocabulary here)."""
    sys.path.insert(0, str(ROOT / "src"))
    from portcheck.dump.logits_file import read_dump, read_dump_meta

    lines = []
    for target_dir in sorted((workdir / "results").glob("*/*/")):
        corpus = target_dir / "corpus.safetensors"
        if not corpus.is_file():
            continue
        meta = read_dump_meta(target_dir / "logits.safetensors")
        positions = sum(len(ids) for ids in read_dump(corpus).input_ids)
        reference = target_dir / "decode_reference.safetensors"
        scored = f"{read_dump_meta(reference)['run_seconds']:.1f} s" if reference.is_file() else "—"
        stages = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in meta.get("stage_seconds", []))
        lines.append(
            f"{target_dir.name:15s} engine session {meta['run_seconds']:6.1f} s: {stages}; reference scoring its "
            f"decode {scored}; corpus {corpus.stat().st_size / positions:,.0f} B/position")
        lines += mode_costs(target_dir, read_dump_meta)
    return lines


def _seconds(meta: dict) -> str:
    """A dump's run time; a reference score_mode skipped without an engine (the run decoded nothing) has none."""
    return f"{meta['run_seconds']:.1f} s" if "run_seconds" in meta else "skipped"


def mode_costs(target_dir: Path, read_dump_meta) -> list[str]:
    """Each engine-mode run of the target: its whole job (engine start included) and its measured decode, the base
    configuration's decode of the same workload (inside the dump's session), and the reference's scoring."""
    lines = []
    base = target_dir / "modes" / "base.safetensors"
    # <mode>.json; not <mode>.reference_acceptance.json beside it (score_mtp's)
    for proof_path in sorted(p for p in (target_dir / "modes").glob("*.json") if "." not in p.stem):
        proof = json.loads(proof_path.read_text())
        reference = proof_path.with_suffix(".reference.safetensors")
        scored = _seconds(read_dump_meta(reference)) if reference.is_file() else "—"
        base_s = _seconds(read_dump_meta(base)) if base.is_file() else "—"
        start = proof["timings"].get("engine_start_s", float("nan"))
        lines.append(f"  {proof['run']}: {proof['status']}, job {proof['job_seconds']:.1f} s (engine start "
                     f"{start:.1f} s), decode {proof['decode_seconds']:.1f} s vs base {base_s}; "
                     f"reference scoring {scored}")
    return lines


if __name__ == "__main__":
    main()
