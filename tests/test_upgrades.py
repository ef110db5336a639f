"""Reruns after upgrades: the installed versions that affect a target's results are params of its rules, so an
upgrade reruns exactly the affected targets' jobs (and what follows from them) and --list-changes params says
why. An upgrade is simulated with a fake distribution ahead of the real one on PYTHONPATH: importlib.metadata
then reports the fake version, as after a `pip install -U`; nothing in portcheck is patched."""

from __future__ import annotations

from importlib import metadata

import pytest

from conftest import ROOT, copy_workflow, planned_jobs, snakemake
from portcheck.workflow.version_params import affecting, result_versions
from portcheck.report.render import section_headings

HISTORY_HEADING = "## " + section_headings()["history"]["heading"]

pytestmark = pytest.mark.workflow
TEST_CONFIG = str(ROOT / ".test" / "config.yaml")
MODEL = "tiny-qwen3.5"


def fake_upgrade(site, distribution: str, version: str) -> None:
    info = site / f"{distribution.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: {version}\n")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    workdir = copy_workflow(tmp_path_factory.mktemp("upgrades"))
    snakemake(workdir, "report", "--configfile", TEST_CONFIG)
    return workdir


def test_which_versions_affect_which_target():
    assert affecting("cpu-hf-fp32") == ("torch", "transformers", "flash_linear_attention", "causal_conv1d")
    assert "vllm" in affecting("cpu-vllm-bf16") and "vllm_ascend" not in affecting("cpu-vllm-bf16")
    npu = affecting("npu-vllm-bf16")
    assert {"vllm", "vllm_ascend", "torch_npu", "cann", "npu_driver"} <= set(npu)
    assert "vllm_ascend" not in affecting("npu-hf-bf16") and "torch_npu" in affecting("npu-hf-bf16")
    assert "gpu_driver" in affecting("gpu-vllm-bf16") and "torch_npu" not in affecting("gpu-vllm-bf16")
    versions = {"torch": "2.9", "transformers": "5.0", "vllm": "0.18", "vllm_ascend": "0.18rc1", "cann": None}
    assert result_versions("npu-vllm-bf16", versions)["vllm_ascend"] == "0.18rc1"
    assert "vllm" not in result_versions("cpu-hf-bf16", versions)


def test_nothing_reruns_without_an_upgrade(finished_run):
    assert planned_jobs(finished_run, "--configfile", TEST_CONFIG) == {}


def test_upgrading_transformers_reruns_the_dumps_not_the_model(finished_run, tmp_path, monkeypatch):
    fake_upgrade(tmp_path, "transformers", "99.0.0")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    plan = planned_jobs(finished_run, "--configfile", TEST_CONFIG)
    assert plan["dump_logits"] == 2 and plan["capture_env"] == 2 and plan.get("run_benchmarks", 1) == 1  # not the reference
    assert plan["compare_logits"] == 1 and plan["render_report"] == 1
    assert "fetch_model" not in plan and "write_manifest" not in plan
    assert plan["measure_context"] == 1  # the far-context measurement runs on the reference stack
    assert plan["dump_vision"] == 2 and plan["compare_vision"] == 1  # the image prompts run through transformers
    # The dry run says why: the recorded and the installed versions. (`--list-changes params` cannot be used to
    # check this: Snakemake 9.27.1 lists an output of every job with recorded params, changed or not.)
    out = snakemake(finished_run, "report", "--dry-run", "--configfile", TEST_CONFIG).stdout
    reasons = [line for line in out.splitlines() if "Params have changed" in line]
    # dump_logits, capture_env and dump_vision of both targets, measure_context (run_benchmarks of the target under
    # test reruns too, after its dump, whose rerun is the reason Snakemake gives for it)
    assert len(reasons) == 3 * 2 + plan["measure_context"]
    installed = metadata.version("transformers")
    assert all(f"'transformers': '{installed}'" in r and "'transformers': '99.0.0'" in r for r in reasons)


@pytest.mark.parametrize("distribution", ["vllm", "vllm-ascend", "torch-npu"])
def test_upgrading_what_hf_cpu_targets_do_not_use_reruns_nothing(finished_run, tmp_path, monkeypatch, distribution):
    fake_upgrade(tmp_path, distribution, "99.0.0")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    assert planned_jobs(finished_run, "--configfile", TEST_CONFIG) == {}


def test_upgrading_vllm_reruns_only_the_vllm_target(finished_run, tmp_path, monkeypatch):
    """With a vllm target defined too, a vllm upgrade plans its jobs only: the hf targets stay."""
    fake_upgrade(tmp_path, "vllm", "99.0.0")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    out = snakemake(finished_run, "report", "--dry-run", "--configfile", TEST_CONFIG,
                    "--config", "targets={cpu-vllm-bf16: {enabled: true}}").stdout
    planned_targets = {line.split("target=", 1)[1].split(",")[0].strip() for line in out.splitlines()
                       if "wildcards: target=" in line}
    assert planned_targets == {"cpu-vllm-bf16"}


# ---- the history file in a real run (reuses the finished run above)


def test_deleting_the_history_loses_nothing_else(finished_run):
    path = finished_run / "results" / MODEL / "history.jsonl"
    assert path.is_file() and len(path.read_text().splitlines()) == 1
    path.unlink()
    assert planned_jobs(finished_run, "--configfile", TEST_CONFIG) == {}


def test_corrupted_history_is_set_aside_and_the_report_still_renders(finished_run):
    import time

    path = finished_run / "results" / MODEL / "history.jsonl"
    path.write_text('{"targets": {}}\n{truncated by a full disk\n')
    time.sleep(1.1)
    template = finished_run / "reports" / "templates" / "report.md.j2"
    template.write_text(template.read_text() + "\n")
    snakemake(finished_run, "report", "--configfile", TEST_CONFIG)
    report = (finished_run / "reports" / MODEL / "report.md").read_text()
    assert HISTORY_HEADING in report and "corrupted" in report and "set aside as" in report
    aside = list(path.parent.glob("history.jsonl.corrupt-*"))
    assert len(aside) == 1 and "truncated by a full disk" in aside[0].read_text()
    assert len(path.read_text().splitlines()) == 1
