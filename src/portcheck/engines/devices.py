"""The one device abstraction: cpu, cuda (target device "gpu") and npu share every code path but this."""

from __future__ import annotations

import importlib
import os
import resource

from portcheck.errors import PortcheckError
from portcheck.targets import TORCH_DEVICE

PROFILE_HINT = {
    "gpu": "run gpu targets on a CUDA host (snakemake --profile profiles/gpu), or disable them in the config",
    "npu": "run npu targets on an Ascend host with CANN, torch_npu and vllm-ascend installed "
    "(snakemake --profile profiles/npu), or disable them in the config",
}


def require_backend(device: str) -> None:
    """Fail early, naming what is missing, when this host cannot run `device` (cpu / gpu / npu)."""
    import torch

    if device == "npu":
        try:
            # torch_npu registers the "npu" device with torch when imported; nothing else imports it.
            importlib.import_module("torch_npu")
        except ImportError as exc:
            raise PortcheckError(
                f"this npu target needs torch_npu, which is not importable here ({exc}); {PROFILE_HINT['npu']}"
            ) from exc
        if not torch.npu.is_available():  # type: ignore[attr-defined]
            raise PortcheckError(f"torch_npu is installed but sees no NPU; {PROFILE_HINT['npu']}")
    elif device == "gpu":
        # A plain torch.cuda.is_available() touches the CUDA driver (poisoning fork) without counting as CUDA
        # being initialised, which is all vLLM looks at before it forks its engine process: the child then fails
        # with "Cannot re-initialize CUDA in forked subprocess". The NVML-based check leaves the driver alone.
        os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "1"
        if not torch.cuda.is_available():
            raise PortcheckError(
                f"this gpu target needs CUDA, but torch {torch.__version__} sees no CUDA device; {PROFILE_HINT['gpu']}"
            )
    elif device != "cpu":
        raise PortcheckError(f"unknown device {device!r}; expected cpu, gpu or npu")


def torch_device(device: str):
    import torch

    require_backend(device)
    return torch.device(TORCH_DEVICE[device])


def _accelerator_module(device: str):
    import torch

    return {"gpu": getattr(torch, "cuda", None), "npu": getattr(torch, "npu", None)}.get(device)


def synchronize(device: str) -> None:
    """Wait for queued kernels, so timings measure work done rather than work queued."""
    module = _accelerator_module(device)
    if module is not None:
        module.synchronize()


def reset_peak_memory(device: str) -> None:
    module = _accelerator_module(device)
    if module is not None:
        module.reset_peak_memory_stats()


def peak_memory_bytes(device: str) -> int:
    """Peak device memory from torch's counters on cuda/npu; the process's peak RSS on cpu."""
    module = _accelerator_module(device)
    if module is not None:
        return int(module.max_memory_allocated())
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


def set_cpu_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(int(threads))
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))
