"""The installed versions that affect a target's results, as rule params: Snakemake reruns a rule whose params
changed, so upgrading vllm-ascend reruns the npu-vllm targets' jobs and nothing else, and
`snakemake --list-changes params` names them. Read on the host that evaluates the workflow."""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path

from .envinfo import _run, stack_versions
from .targets import parse_target

# Every target runs torch and transformers' tokenizer; the rest by engine and device.
COMMON = ("torch", "transformers")
BY_ENGINE = {
    # transformers picks flash-linear-attention / causal-conv1d kernels for Gated DeltaNet when installed.
    "hf": ("flash_linear_attention", "causal_conv1d"),
    "vllm": ("vllm",),
}
BY_DEVICE = {"cpu": (), "gpu": ("gpu_driver",), "npu": ("torch_npu", "cann", "npu_driver")}
BY_DEVICE_ENGINE = {("npu", "vllm"): ("vllm_ascend",)}
NPU_DRIVER_FILES = ("/usr/local/Ascend/driver/version.info",)


@functools.lru_cache(maxsize=1)
def installed_versions() -> dict[str, str | None]:
    """stack_versions() plus the accelerator drivers, read once per process."""
    versions = dict(stack_versions())
    versions["npu_driver"] = npu_driver_version()
    versions["gpu_driver"] = gpu_driver_version()
    return versions


def npu_driver_version(files: tuple[str, ...] = NPU_DRIVER_FILES) -> str | None:
    root = os.environ.get("ASCEND_DRIVER_HOME")
    for path in ((f"{root}/version.info",) if root else ()) + tuple(files):
        try:
            match = re.search(r"version\s*=\s*([0-9][\w.\-]*)", Path(path).read_text(errors="replace"), re.I)
        except OSError:
            continue
        if match:
            return match.group(1)
    return None


def gpu_driver_version() -> str | None:
    out = _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
    return out.splitlines()[0].strip() if out else None


def affecting(target: str) -> tuple[str, ...]:
    t = parse_target(target)
    return COMMON + BY_ENGINE.get(t.engine, ()) + BY_DEVICE.get(t.device, ()) + BY_DEVICE_ENGINE.get(
        (t.device, t.engine), ()
    )


def result_versions(target: str, versions: dict | None = None) -> dict[str, str | None]:
    """{name: version or None} of what can change `target`'s results; absent packages are None."""
    versions = installed_versions() if versions is None else versions
    return {name: versions.get(name) for name in affecting(target)}
