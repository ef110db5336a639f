"""A report never stands on missing, stale or edited artifacts: each artifact's sha256 is recorded when its rule
writes it; a job refuses an input that differs, the report refuses one, `portcheck verify` names them, and the
workflow rebuilds what the report reads when it is absent or edited. A local checkpoint's content (not its mtime)
decides reruns. Runs the CI config on a local copy of the tiny checkpoint."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, SNAKEMAKE, copy_workflow, planned_jobs, snakemake
from portcheck.artifacts import CHANGED, artifact_state, check_artifacts
from portcheck.errors import PortcheckError

pytestmark = pytest.mark.workflow
MODEL = "tiny-qwen3.5"
TEST_CONFIG = str(ROOT / ".test" / "config.yaml")


def config_args(workdir: Path) -> list[str]:
    return ["--configfile", TEST_CONFIG, str(workdir / "local.yaml")]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_model_dir) -> Path:
    """The CI config run once with `source: local` on a checkpoint inside the work directory (copied with it)."""
    workdir = copy_workflow(tmp_path_factory.mktemp("integrity"))
    shutil.copytree(tiny_model_dir, workdir / "checkpoint")
    (workdir / "local.yaml").write_text(yaml.safe_dump({"model": {"source": "local", "path": "checkpoint"}}))
    snakemake(workdir, "report", *config_args(workdir))
    return workdir


@pytest.fixture
def run_copy(finished_run, tmp_path) -> Path:
    dest = tmp_path / "copy"
    shutil.copytree(finished_run, dest, symlinks=True)
    return dest


def plan(workdir: Path) -> dict[str, int]:
    return planned_jobs(workdir, *config_args(workdir))


def verify(workdir: Path, *paths: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "portcheck.cli", "verify", *paths], cwd=workdir,
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})


def results(workdir: Path) -> Path:
    return workdir / "results" / MODEL


def test_every_artifact_is_recorded_and_verifies(finished_run):
    assert plan(finished_run) == {}
    for name in ("logits.safetensors", "layers.safetensors", "env.json", "bench.json"):
        recorded = json.loads((results(finished_run) / "cpu-hf-bf16" / f".{name}.sha256").read_text())
        assert recorded["rule"] in ("dump_logits", "capture_env", "run_benchmarks") and len(recorded["sha256"]) == 64
    run = verify(finished_run)
    assert run.returncode == 0, run.stderr
    assert "artifact(s) match the sha256 recorded" in run.stdout


def test_edited_comparison_is_refused_and_rebuilt(run_copy):
    path = results(run_copy) / "compare" / "cpu-hf-bf16.json"
    compare = json.loads(path.read_text())
    compare["kld_mean"] = 0.123
    path.write_text(json.dumps(compare, indent=2))
    relative = f"results/{MODEL}/compare/cpu-hf-bf16.json"
    # portcheck verify and every reader refuse it, naming it and what rebuilds it
    run = verify(run_copy)
    assert run.returncode == 1 and relative in run.stderr and "rule compare_logits rewrites it" in run.stderr
    assert f"--forcerun {relative}" in run.stderr
    with pytest.raises(PortcheckError, match="differs from the sha256 recorded"):
        check_artifacts([path], "the report")
    # the workflow reruns its job and what follows (not "Nothing to be done")
    dry = snakemake(run_copy, "report", "--dry-run", *config_args(run_copy))
    assert f"{relative} differs from the sha256 recorded" in dry.stderr
    assert plan(run_copy) == {"compare_logits": 1, "plot_kld": 1, "render_report": 1, "render_html": 1,
                              "report": 1}
    snakemake(run_copy, "report", *config_args(run_copy))
    assert json.loads(path.read_text())["kld_mean"] != 0.123
    assert "1.230e-01" not in (run_copy / "reports" / MODEL / "report.md").read_text()
    assert plan(run_copy) == {}


def test_truncated_dump_is_refused_then_rebuilt_once_deleted(run_copy):
    dump = results(run_copy) / "cpu-hf-bf16" / "corpus.safetensors"
    with open(dump, "r+b") as handle:
        handle.truncate(dump.stat().st_size // 2)
    # the comparison that reads it refuses it (its job fails, naming the file and the command that rebuilds it)
    run = snakemake(run_copy, "report", *config_args(run_copy), check=False)
    output = run.stdout + run.stderr
    assert run.returncode != 0 and "corpus.safetensors differs from the sha256 recorded" in output
    assert "rule dump_logits rewrites it" in output and "--forcerun" in output
    # deleting it, as a user would: the report's missing comparison is rebuilt, and the dump it reads with it
    dump.unlink()
    planned = plan(run_copy)
    assert planned["dump_logits"] == 1 and planned["compare_corpus"] == 1 and planned["render_report"] == 1
    snakemake(run_copy, "report", *config_args(run_copy))
    assert artifact_state(dump) == "ok" and verify(run_copy).returncode == 0
    assert plan(run_copy) == {}


def test_deleted_comparison_is_rebuilt_not_nothing_to_be_done(run_copy):
    (results(run_copy) / "compare" / "cpu-hf-bf16.decode.json").unlink()
    assert plan(run_copy) == {"compare_decode": 1, "render_report": 1, "render_html": 1, "report": 1}
    run = verify(run_copy)
    assert run.returncode == 1 and "cpu-hf-bf16.decode.json is absent (rule compare_decode rewrites it)" in run.stderr


def test_local_checkpoint_overwritten_in_place_reruns_what_reads_it(run_copy):
    weights = run_copy / "checkpoint" / "model.safetensors"
    time.sleep(1.1)
    os.utime(weights)  # a touch changes no content: nothing reruns
    assert plan(run_copy) == {}
    with open(weights, "r+b") as handle:  # `cat other.safetensors > model.safetensors`: same names, other bytes
        handle.seek(-4096, os.SEEK_END)
        block = handle.read(4096)
        handle.seek(-4096, os.SEEK_END)
        handle.write(bytes(255 - b for b in block))
    planned = plan(run_copy)
    benchmarked = len(list(results(run_copy).glob("*/bench.json")))
    assert planned["write_manifest"] == 1 and planned["dump_logits"] == 2
    assert planned.get("run_benchmarks", 0) == benchmarked and planned["render_report"] == 1


def test_refused_checkpoint_starts_no_engine(run_copy):
    config = run_copy / "checkpoint" / "config.json"
    config.write_text(config.read_text()[:-20])
    run = snakemake(run_copy, "report", *config_args(run_copy), check=False)
    output = run.stdout + run.stderr
    assert run.returncode != 0 and "config.json is not valid JSON" in output and "Traceback" not in output
    started = [line for line in output.splitlines() if line.strip().startswith(("rule dump_logits",
                                                                                 "rule run_benchmarks"))]
    assert started == [], "no engine may start on a checkpoint the manifest refused"


def test_interrupted_forcerun_of_the_dumps_is_rebuilt_and_unlock_works(run_copy):
    reference = results(run_copy) / "cpu-hf-fp32" / "logits.safetensors"
    other = results(run_copy) / "cpu-hf-bf16" / "logits.safetensors"
    command = [*SNAKEMAKE, "--cores", "1", "--directory", str(run_copy), "--snakefile", str(run_copy / "Snakefile"),
               "report", *config_args(run_copy), "--forcerun", "dump_logits"]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    deadline = time.time() + 300
    while (reference.exists() and other.exists()) and time.time() < deadline and process.poll() is None:
        time.sleep(0.1)
    os.killpg(process.pid, signal.SIGKILL)  # a hard kill while the first dump job runs
    process.wait()
    # Snakemake's own advice after a hard kill works (the workflow is parsed without --cores)
    for args in (["--unlock"], ["--cleanup-metadata", str(reference.relative_to(run_copy))]):
        run = subprocess.run([*SNAKEMAKE, "--directory", str(run_copy), "--snakefile", str(run_copy / "Snakefile"),
                              *args, *config_args(run_copy)], capture_output=True, text=True, env=env)
        assert run.returncode == 0, run.stderr[-3000:]
    planned = plan(run_copy)
    assert planned.get("dump_logits", 0) >= 1 and planned["render_report"] == 1


# --- the pieces, without a workflow run ---------------------------------------------------------------------------


def test_recorded_hash_tells_ok_changed_absent_and_unrecorded(tmp_path):
    from portcheck.artifacts import ABSENT, OK, UNRECORDED, record_hash

    path = tmp_path / "results" / "m" / "compare" / "t.json"
    path.parent.mkdir(parents=True)
    path.write_text('{"kld_mean": 1e-5}')
    assert artifact_state(path) == UNRECORDED
    record_hash(path, "compare_logits")
    assert artifact_state(path) == artifact_state(path, quick=True) == OK
    stat = path.stat()
    path.write_text('{"kld_mean": 9e-5}')  # same size, edited
    assert artifact_state(path) == CHANGED
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # an edit that kept the mtime: only hashing sees it
    assert artifact_state(path, quick=True) == OK and artifact_state(path) == CHANGED
    path.unlink()
    assert artifact_state(path) == ABSENT
    with pytest.raises(PortcheckError) as excinfo:
        check_artifacts([path], "the report")
    assert "rule compare_logits rewrites it" in str(excinfo.value) and f"--forcerun {path}" in str(excinfo.value)


def test_cli_compare_refuses_an_edited_dump(tmp_path, capsys):
    from portcheck import cli
    from portcheck.artifacts import record_hash

    dump = tmp_path / "npu.safetensors"
    dump.write_bytes(b"\0" * 64)
    record_hash(dump, "portcheck dump")
    dump.write_bytes(b"\1" * 64)
    assert cli.main(["compare", "--baseline", str(dump), "--target", str(dump)]) == 2
    error = capsys.readouterr().err
    assert "npu.safetensors differs from the sha256 recorded" in error and "`portcheck dump` rewrites it" in error
    assert "rerun the portcheck command that wrote them" in error


def test_forced_files_reach_snakemake_settings_set_after_parsing():
    from dataclasses import dataclass, field

    from portcheck.workflow.rebuild import force_rebuild

    @dataclass
    class Settings:
        forcerun: frozenset = field(default_factory=frozenset)

    class Workflow:
        def __init__(self):
            self.dag_settings = None

    workflow = Workflow()
    force_rebuild(workflow, ["results/m/compare/t.json"])
    workflow.dag_settings = Settings(frozenset({"dump_logits"}))  # what Snakemake does once the Snakefile is parsed
    assert workflow.dag_settings.forcerun == {"dump_logits", "results/m/compare/t.json"}
    already = Workflow()
    already.dag_settings = Settings()
    force_rebuild(already, ["a.json"])
    assert already.dag_settings.forcerun == {"a.json"}


def test_files_forced_twice_are_all_forced():
    from types import SimpleNamespace

    from portcheck.workflow.rebuild import force_rebuild

    class Workflow:
        dag_settings = None

    workflow = Workflow()
    force_rebuild(workflow, ["a.json"])
    force_rebuild(workflow, ["b.json"])
    workflow.dag_settings = SimpleNamespace(forcerun=frozenset())
    assert workflow.dag_settings.forcerun == {"a.json", "b.json"}


def test_each_per_model_artifact_names_its_kind_and_the_rule_that_rewrites_it():
    from portcheck.artifacts import WRITTEN_BY, kind_of

    for name, kind, rule in [("manifest.json", "manifest", "write_manifest"), ("context.json", "context",
                             "measure_context"), ("mtp_head.json", "mtp_head", "measure_mtp")]:
        assert kind_of(f"results/m/{name}") == kind and WRITTEN_BY[kind] == rule
    assert kind_of("results/m/t/modes/mtp.reference_acceptance.json") == "mode_mtp_reference"
