"""The command line without Snakemake, end to end on the tiny model: dump the reference and a bf16 target on this
host, compare them, with the same file formats as the workflow; and its refusals (existing dump, missing files)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from portcheck.dump.logits_file import read_dump

pytestmark = pytest.mark.workflow
PROMPTS = ["The capital of France is", "法国的首都是"]


def portcheck(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "portcheck.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=900)


@pytest.fixture(scope="module")
def dumps(tiny_model_dir, tmp_path_factory):
    work = tmp_path_factory.mktemp("cli")
    (work / "prompts.txt").write_text("\n".join(PROMPTS) + "\n", encoding="utf-8")
    runs = {}
    for target, name in (("cpu-hf-fp32", "ref"), ("cpu-hf-bf16", "bf16")):
        runs[name] = portcheck("dump", "--target", target, "--model", str(tiny_model_dir), "--output",
                               f"{name}.safetensors", "--prompts", "prompts.txt", cwd=work)
    return work, runs


def test_dump_writes_the_workflow_formats(dumps):
    work, runs = dumps
    for name, target in (("ref", "cpu-hf-fp32"), ("bf16", "cpu-hf-bf16")):
        assert runs[name].returncode == 0, runs[name].stderr[-3000:]
        dump = read_dump(work / f"{name}.safetensors")
        assert len(dump.logits) == len(PROMPTS)
        for side in ("env", "adaptation", "determinism", "samples"):
            assert json.loads((work / f"{name}.{side}.json").read_text())
        assert json.loads((work / f"{name}.env.json").read_text())["target"] == target


def test_compare_gives_a_verdict_and_the_full_json(dumps):
    work, _ = dumps
    run = portcheck("compare", "--baseline", "ref.safetensors", "--target", "bf16.safetensors", "--output",
                    "cmp.json", cwd=work)
    summary = json.loads(run.stdout)
    full = json.loads((work / "cmp.json").read_text())
    assert summary["verdict"] == full["verdict"]["status"] == "pass" and run.returncode == 0
    assert 0 < full["kld_mean"] < 1e-3 and full["n_prompts"] == len(PROMPTS)


def test_compare_fails_the_exit_code_when_the_verdict_fails(dumps, tmp_path):
    work, _ = dumps
    strict = tmp_path / "strict.yaml"
    strict.write_text("compare:\n  thresholds:\n    kld_mean_max: {value: 0.0, anchor: test}\n")
    run = portcheck("compare", "--baseline", "ref.safetensors", "--target", "bf16.safetensors", "--config",
                    str(strict), cwd=work)
    assert run.returncode == 3 and json.loads(run.stdout)["verdict"] == "fail"


def test_second_dump_refuses_to_overwrite_unless_forced(dumps, tiny_model_dir):
    work, _ = dumps
    before = (work / "ref.safetensors").read_bytes()
    run = portcheck("dump", "--target", "cpu-hf-fp32", "--model", str(tiny_model_dir), "--output",
                    "ref.safetensors", "--prompts", "prompts.txt", cwd=work)
    assert run.returncode == 2 and "refusing to overwrite" in run.stderr and "--force" in run.stderr
    assert (work / "ref.safetensors").read_bytes() == before


def test_missing_inputs_are_named(dumps):
    work, _ = dumps
    run = portcheck("compare", "--baseline", "absent.safetensors", "--target", "bf16.safetensors", cwd=work)
    assert run.returncode == 2 and "absent.safetensors does not exist" in run.stderr
    run = portcheck("compare", "--baseline", "ref.safetensors", "--target", "bf16.safetensors", "--config",
                    "typo.yaml", cwd=work)
    assert run.returncode == 2 and "config file typo.yaml does not exist" in run.stderr
