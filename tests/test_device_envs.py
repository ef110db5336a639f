"""The device envs (envs/gpu.yaml, envs/npu.yaml) can be installed: uv's resolver, in cross-platform mode, finds one
set of versions that holds every pin of an env's pip list on the hosts' platforms (no install, no GPU or NPU needed),
and fails on an unsatisfiable set. It needs the package index: skipped only when that cannot be reached, never when
resolution fails. uv caches what it fetched, so reruns take seconds."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from conftest import ROOT

PYTHON = "3.11"  # the envs' python=3.11
# The hosts' platforms: the Ascend host is a Kunpeng (aarch64) machine; x86_64 Ascend and CUDA hosts exist too.
PLATFORMS = {"gpu": ("x86_64-manylinux_2_28",), "npu": ("aarch64-manylinux_2_28", "x86_64-manylinux_2_28")}
INDEX = os.environ.get("UV_DEFAULT_INDEX") or os.environ.get("UV_INDEX_URL") or "https://pypi.org/simple/"

# envs/npu.yaml's step 2 builds vLLM from its sdist with VLLM_TARGET_DEVICE=empty: uv cannot resolve that without
# building it, so the test resolves the step-1 pins together with what that build requires. These are the
# Requires-Dist (extras left out) of the wheel `VLLM_TARGET_DEVICE=empty uv pip install --no-build-isolation
# --no-binary vllm vllm==0.18.0` builds (= the sdist's requirements/common.txt). A new vllm pin in envs/npu.yaml
# needs its list here (the test says so).
# vLLM's marker on llguidance and xgrammar (the platforms they have wheels for; xgrammar lists them in another order).
MACHINES = " or ".join(f'platform_machine == "{m}"' for m in ("x86_64", "arm64", "aarch64", "s390x", "ppc64le"))
VLLM_EMPTY_REQUIRES = {
    "0.18.0": f"""
        regex
        cachetools
        psutil
        sentencepiece
        numpy
        requests>=2.26.0
        tqdm
        blake3
        py-cpuinfo
        transformers<5,>=4.56.0
        tokenizers>=0.21.1
        protobuf!=6.30.*,!=6.31.*,!=6.32.*,!=6.33.0.*,!=6.33.1.*,!=6.33.2.*,!=6.33.3.*,!=6.33.4.*,>=5.29.6
        fastapi[standard]>=0.115.0
        aiohttp>=3.13.3
        openai<2.25.0,>=1.99.1
        pydantic>=2.12.0
        prometheus_client>=0.18.0
        pillow
        prometheus-fastapi-instrumentator>=7.0.0
        tiktoken>=0.6.0
        lm-format-enforcer==0.11.3
        llguidance<1.4.0,>=1.3.0; {MACHINES}
        outlines_core==0.2.11
        diskcache==5.6.3
        lark==1.2.2
        xgrammar<1.0.0,>=0.1.32; {MACHINES}
        typing_extensions>=4.10
        filelock>=3.16.1
        partial-json-parser
        pyzmq>=25.0.0
        msgspec
        gguf>=0.17.0
        mistral_common[image]>=1.10.0
        opencv-python-headless>=4.13.0
        pyyaml
        six>=1.16.0; python_version > "3.11"
        setuptools<81.0.0,>=77.0.3; python_version > "3.11"
        einops
        compressed-tensors==0.13.0
        depyf==0.20.0
        cloudpickle
        watchfiles
        python-json-logger
        ninja
        pybase64
        cbor2
        ijson
        setproctitle
        openai-harmony>=0.0.3
        anthropic>=0.71.0
        model-hosting-container-standards<1.0.0,>=0.1.13
        mcp
        opentelemetry-sdk>=1.27.0
        opentelemetry-api>=1.27.0
        opentelemetry-exporter-otlp>=1.27.0
        opentelemetry-semantic-conventions-ai>=0.4.1
    """,
}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pip_list(name: str) -> list[str]:
    """The env file's pip entries, `-e ..` and other options left out."""
    env = yaml.safe_load((ROOT / "envs" / f"{name}.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    return [entry for entry in pip if not entry.startswith("-")]


def pins(name: str) -> dict[str, str]:
    return {canonical(p): v for p, v in (entry.split("==", 1) for entry in pip_list(name))}


def install_commands(name: str) -> str:
    """The env file's header comment as one line (continuations joined): where its install steps are written."""
    header = []
    for line in (ROOT / "envs" / f"{name}.yaml").read_text().splitlines():
        if not line.startswith("#"):
            break
        header.append(line.lstrip("# ").rstrip())
    return re.sub(r"\s*\\\s+", " ", " \\ ".join(header))


def npu_step2() -> tuple[str, list[str]]:
    """envs/npu.yaml's vLLM install: the vllm version it pins and the overrides it applies."""
    text = install_commands("npu")
    command = re.search(r"VLLM_TARGET_DEVICE=empty uv pip install (.*?vllm==(\S+))", text)
    assert command, "envs/npu.yaml documents no `VLLM_TARGET_DEVICE=empty uv pip install ... vllm==X` step"
    return command.group(2), re.findall(r"--override <\(echo ([^)]+)\)", command.group(1))


@pytest.fixture(scope="module")
def uv() -> str:
    found = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    assert found, "uv is not installed (make setup installs it into .venv)"
    return found


@pytest.fixture(scope="module")
def index_reachable() -> None:
    """One HEAD request (5 s): the index must answer it itself (an intercepting proxy's 404 for a host it cannot
    reach is no answer), or a 405 (HEAD not allowed) shows it is there."""
    try:
        urllib.request.urlopen(urllib.request.Request(INDEX, method="HEAD"), timeout=5).close()
    except urllib.error.HTTPError as exc:
        if exc.code != 405:
            pytest.skip(f"the package index {INDEX} cannot be reached (HTTP {exc.code}): resolving the envs needs it")
    except (urllib.error.URLError, OSError) as exc:
        pytest.skip(f"the package index {INDEX} cannot be reached ({exc}): resolving the device envs needs it")


def resolve(uv: str, workdir: Path, requirements: list[str], overrides: list[str], platform: str) -> dict[str, str]:
    (workdir / "requirements.in").write_text("\n".join(requirements) + "\n")
    command = [uv, "pip", "compile", "--python-version", PYTHON, "--python-platform", platform,
               "--no-header", "--no-annotate", "requirements.in"]
    if overrides:
        (workdir / "overrides.txt").write_text("\n".join(overrides) + "\n")
        command += ["--override", "overrides.txt"]
    started = time.monotonic()
    run = subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=600)
    print(f"uv {' '.join(command[1:])}: {time.monotonic() - started:.1f} s")
    assert run.returncode == 0, f"unsatisfiable for {platform}:\n{run.stderr}"
    return {canonical(p): v for line in run.stdout.splitlines() if "==" in line
            for p, v in [line.split(";")[0].strip().split("==", 1)]}


@pytest.mark.parametrize("name,platform", [(n, p) for n, platforms in PLATFORMS.items() for p in platforms])
def test_device_env_resolves(name, platform, uv, index_reachable, tmp_path):
    requirements, overrides = pip_list(name), []
    if name == "npu":
        vllm, overrides = npu_step2()
        assert vllm in VLLM_EMPTY_REQUIRES, (
            f"envs/npu.yaml installs vllm=={vllm}: add the Requires-Dist of its VLLM_TARGET_DEVICE=empty build "
            "(its requirements/common.txt) to VLLM_EMPTY_REQUIRES")
        requirements += VLLM_EMPTY_REQUIRES[vllm].split("\n")
        if platform.startswith("x86_64"):
            # torch-npu's x86_64 wheel requires torch==X+cpu, which only the PyTorch CPU index has (envs/npu.yaml:
            # PIP_EXTRA_INDEX_URL on x86_64 hosts); PyPI's torch of the same release stands in for it here.
            overrides = overrides + [f"torch=={pins('npu')['torch']}"]
    resolved = resolve(uv, tmp_path, [r.strip() for r in requirements if r.strip()], overrides, platform)
    assert {p: v for p, v in pins(name).items() if resolved.get(p) != v} == {}


def test_npu_env_installs_the_vllm_its_vllm_ascend_matches():
    """vllm is installed by step 2, not by the pip list; vLLM-Ascend vX.Y.Z goes with vLLM vX.Y.Z (its compatibility
    matrix), and step 2's overrides are pins of step 1 (else step 2 would change what step 1 installed)."""
    env = pins("npu")
    vllm, overrides = npu_step2()
    assert "vllm" not in env
    assert vllm == re.match(r"\d+\.\d+\.\d+", env["vllm-ascend"]).group(0)
    assert overrides and all(canonical(p) in env and env[canonical(p)] == v
                             for p, v in (o.split("==", 1) for o in overrides)), overrides
