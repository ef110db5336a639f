"""Several hosts, one results store: two working directories on this machine share one fs store
(profiles/shared-fs). One makes the reference, the other a second target; the report is rendered from both.
Bad input: an unreachable store, and a second host about to overwrite complete artifacts in the store."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, copy_workflow, planned_jobs, snakemake

pytestmark = [
    pytest.mark.workflow,
    pytest.mark.skipif(shutil.which("rsync") is None, reason="the fs storage plugin copies with rsync"),
]
MODEL = "tiny-qwen3.5"
TEST_CONFIG = ROOT / ".test" / "config.yaml"


def host_config(workdir: Path, targets: dict) -> Path:
    config = yaml.safe_load(TEST_CONFIG.read_text())
    config["targets"] = {name: {"enabled": enabled} for name, enabled in targets.items()}
    path = workdir / "host.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True))
    return path


def shared(store: Path, configfile: Path) -> list[str]:
    return ["--workflow-profile", str(ROOT / "profiles" / "shared-fs"), "--default-storage-prefix", str(store),
            "--configfile", str(configfile)]


def snapshot(store: Path) -> dict[Path, tuple[float, int]]:
    return {p: (p.stat().st_mtime, p.stat().st_size) for p in store.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def two_hosts(tmp_path_factory):
    store = tmp_path_factory.mktemp("store")
    host_a = copy_workflow(tmp_path_factory.mktemp("host_a"))
    host_b = copy_workflow(tmp_path_factory.mktemp("host_b"))
    config_a = host_config(host_a, {"cpu-hf-fp32": True, "cpu-hf-bf16": False, "cpu-vllm-bf16": False})
    config_b = host_config(host_b, {"cpu-hf-fp32": True, "cpu-hf-bf16": True, "cpu-vllm-bf16": False})
    snakemake(host_a, "report", *shared(store, config_a))
    reference_before = snapshot(store / "results" / MODEL / "cpu-hf-fp32")
    plan_b = planned_jobs(host_b, *shared(store, config_b))
    snakemake(host_b, "report", *shared(store, config_b))
    return {"store": store, "a": host_a, "b": host_b, "config_b": config_b, "plan_b": plan_b,
            "reference_before": reference_before}


def test_second_host_runs_only_its_target_and_reports_both(two_hosts):
    store = two_hosts["store"]
    # Host B reuses the model and the reference from the store: only its own target (one job per per-target
    # rule), its comparison and the report run.
    plan = two_hosts["plan_b"]
    assert plan["dump_logits"] == 1 and plan["capture_env"] == 1 and plan["compare_logits"] == 1
    assert plan.get("run_benchmarks", 1) == 1
    assert "fetch_model" not in plan and "write_manifest" not in plan
    assert plan["render_report"] == 1
    assert snapshot(store / "results" / MODEL / "cpu-hf-fp32") == two_hosts["reference_before"]
    for target in ("cpu-hf-fp32", "cpu-hf-bf16"):
        assert (store / "results" / MODEL / target / "logits.safetensors").is_file()
    report = (store / "reports" / MODEL / "report.md").read_text()
    assert "### cpu-hf-bf16 vs cpu-hf-fp32" in report
    assert "**Verdict: " in report
    assert (store / "reports" / MODEL / "kld_per_position.png").stat().st_size > 1000
    # Results live in the store, not in either working directory.
    assert not (two_hosts["b"] / "results" / MODEL / "cpu-hf-bf16" / "logits.safetensors").exists()
    # Run again: the report stage reads the store afresh (profiles/shared-fs forcerun); no target is redone.
    again = planned_jobs(two_hosts["b"], *shared(store, two_hosts["config_b"]))
    assert set(again) == {"plot_kld", "plot_long_context", "plot_layers", "plot_bench", "render_report", "render_html", "report"}, again


def test_second_host_refuses_to_overwrite_complete_artifacts(two_hosts):
    store, host_b = two_hosts["store"], two_hosts["b"]
    # A fresh checkout on another host has newer code than the store's artifacts: Snakemake wants to redo them.
    time.sleep(1.1)
    hf = host_b / "src" / "portcheck" / "engines" / "hf.py"
    hf.write_text(hf.read_text() + "\n# a newer checkout\n")
    plan = planned_jobs(host_b, *shared(store, two_hosts["config_b"]))
    assert plan.get("dump_logits") == 2
    before = snapshot(store)
    run = snakemake(host_b, "report", *shared(store, two_hosts["config_b"]), check=False)
    output = run.stdout + run.stderr
    assert run.returncode != 0
    assert "refusing to overwrite complete artifacts in the shared results store" in output
    assert "dump_logits for cpu-hf-fp32" in output and "--config overwrite=true" in output
    assert snapshot(store) == before, "nothing in the store may change"


def test_unreachable_store_fails_before_any_job(tmp_path):
    workdir = copy_workflow(tmp_path / "host")
    configfile = host_config(workdir, {"cpu-hf-fp32": True, "cpu-hf-bf16": False, "cpu-vllm-bf16": False})
    missing = tmp_path / "not-mounted" / "portcheck"
    run = snakemake(workdir, "report", *shared(missing, configfile), check=False)
    output = run.stdout + run.stderr
    assert run.returncode != 0
    assert f"storage prefix {missing} is unreachable" in output
    assert not (workdir / "resources").exists() and not (workdir / "results").exists()
    assert not missing.exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_read_only_store_is_refused(tmp_path):
    workdir = copy_workflow(tmp_path / "host")
    configfile = host_config(workdir, {"cpu-hf-fp32": True, "cpu-hf-bf16": False, "cpu-vllm-bf16": False})
    store = tmp_path / "ro"
    store.mkdir()
    store.chmod(0o555)
    run = snakemake(workdir, "report", *shared(store, configfile), check=False)
    assert run.returncode != 0 and "is not writable" in run.stdout + run.stderr
