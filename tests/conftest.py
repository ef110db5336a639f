"""Shared fixtures: the tiny model (built once per session) and disposable copies of the workflow."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW_FILES = ("Snakefile", "rules", "workflow", "config", "reports/templates", "src", "profiles")
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def default_config() -> dict:
    """The shipped config/config.yaml, as a fresh dict."""
    import yaml

    return yaml.safe_load((ROOT / "config" / "config.yaml").read_text())


def problems_of(config: dict, base_dir: Path = ROOT) -> str:
    """The message config validation refuses `config` with (the test fails if it is accepted)."""
    from portcheck.config import load_schema, validate_config
    from portcheck.errors import PortcheckError

    with pytest.raises(PortcheckError) as excinfo:
        validate_config(config, load_schema(ROOT / "config" / "schema.yaml"), base_dir)
    return str(excinfo.value)


# The vLLM line matrix (scripts/vllm_matrix.py) runs the vLLM tests inside each line's environment on a checkpoint
# built beforehand (an environment with transformers < 5 cannot build Qwen3.5): this names it.
TEST_MODEL_ENV = "PORTCHECK_TEST_MODEL"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    if os.environ.get(TEST_MODEL_ENV):
        return Path(os.environ[TEST_MODEL_ENV])
    from portcheck.model.acquire import fetch_model

    return fetch_model("tiny", tmp_path_factory.mktemp("tiny") / "model", seed=0)


def layer_types(model_dir: Path) -> list[str]:
    """The checkpoint's layer types (Qwen3.5 nests them in text_config; a dense Qwen3 has full attention only)."""
    import json

    config = json.loads((model_dir / "config.json").read_text())
    text = config.get("text_config", config)
    return list(text.get("layer_types") or ["full_attention"] * text["num_hidden_layers"])


def has_gdn(model_dir: Path) -> bool:
    return "linear_attention" in layer_types(model_dir)


def copy_workflow(dest: Path) -> Path:
    """A runnable copy of the workflow (code, config, template) in `dest`, with no results."""
    for name in WORKFLOW_FILES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        elif source.exists():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    result = subprocess.run(
        [*SNAKEMAKE, "--cores", "1", "--directory", str(workdir), "--snakefile", str(workdir / "Snakefile"), *args],
        capture_output=True, text=True, env=env, timeout=1800,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}")
    return result


def planned_jobs(workdir: Path, *args: str) -> dict[str, int]:
    """Rule -> job count that a dry run of `report` would execute (empty when nothing is to do)."""
    result = snakemake(workdir, "report", "--dry-run", *args)
    text = result.stdout + result.stderr
    table = re.search(r"Job stats:\n.*?\n-+\s+-+\n(.*?)\n\s*total", text, re.S)
    if not table:
        assert "Nothing to be done" in text, text[-3000:]
        return {}
    rows = (line.split() for line in table.group(1).splitlines() if line.strip())
    return {name: int(count) for name, count in rows}


@pytest.fixture(scope="session")
def workflow_run(tmp_path_factory) -> Path:
    """The default workflow run once, end to end, in a private copy; tests read its artifacts."""
    workdir = copy_workflow(tmp_path_factory.mktemp("workflow"))
    snakemake(workdir, "report")
    return workdir
