"""Environment capture: what the host running a target is and which software stack produced its numbers.
Anything absent is recorded as None ("absent" in the report), never guessed."""

from __future__ import annotations

import os
import platform
import re
import sys
from pathlib import Path
from typing import Any

from portcheck.env.versions import run_command, stack_versions


def cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    lscpu = run_command(["lscpu"])
    match = re.search(r"Model name:\s*(.+)", lscpu or "")
    return match.group(1).strip() if match else (platform.processor() or None)


# CPU features that decide which float kernels oneDNN and the BLAS run, so how a matmul rounds (the embedded model's
# build and a bf16 engine's figures differ between hosts whose lists differ).
FLOAT_KERNEL_FLAGS = ("amx_bf16", "amx_fp16", "amx_tile", "avx512_bf16", "avx512_fp16", "avx512f", "avx2")


def float_kernel_flags(cpuinfo: str | None = None) -> list[str] | None:
    """The FLOAT_KERNEL_FLAGS this CPU has, in that order; None where /proc/cpuinfo lists no flags."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text() if cpuinfo is None else cpuinfo
    except OSError:
        return None
    match = re.search(r"^flags\s*:(.*)$", cpuinfo, re.MULTILINE)
    return [flag for flag in FLOAT_KERNEL_FLAGS if flag in match.group(1).split()] if match else None


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
    out = run_command(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"])
    if not out:
        return None
    return [dict(zip(("name", "memory", "driver"), (p.strip() for p in line.split(",")))) for line in out.splitlines()]


def npu_info() -> str | None:
    """npu-smi's table as printed: its layout differs across driver versions, so it is kept whole."""
    return run_command(["npu-smi", "info"])


def git_commit(workdir: str | Path) -> str | None:
    commit = run_command(["git", "-C", str(workdir), "rev-parse", "HEAD"])
    if commit and run_command(["git", "-C", str(workdir), "status", "--porcelain", "--untracked-files=no"]):
        commit += "-dirty"
    return commit


def capture_env(target: str, workdir: str | Path = ".") -> dict[str, Any]:
    return {
        "target": target,
        "python": sys.version.split()[0],
        "python_env": sys.prefix,  # the environment that ran the target (targets.<name>.python_env)
        "os": os_name(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "ram_bytes": ram_bytes(),
        "versions": stack_versions(),
        "gpu": gpu_info(),
        "npu": npu_info(),
        "workflow_commit": git_commit(workdir),
    }
