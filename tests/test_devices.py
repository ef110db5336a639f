"""Device selection: gpu and npu targets fail early on a host without them, naming what is missing."""

from __future__ import annotations

import importlib
import os

import pytest

from portcheck.engines import devices
from portcheck.errors import PortcheckError
from portcheck.targets import parse_target


def test_target_names_parse_into_device_engine_dtype():
    target = parse_target("npu-vllm-bf16")
    assert (target.device, target.engine, target.dtype, target.torch_device) == ("npu", "vllm", "bf16", "npu")
    assert parse_target("gpu-hf-fp16").torch_device == "cuda"
    with pytest.raises(PortcheckError, match="<device>-<engine>-<dtype>"):
        parse_target("tpu-hf-bf16")


def test_npu_without_torch_npu_names_the_package_and_profile():
    if importlib.util.find_spec("torch_npu"):
        pytest.skip("torch_npu is installed here")
    with pytest.raises(PortcheckError) as excinfo:
        devices.require_backend("npu")
    assert "torch_npu" in str(excinfo.value) and "profiles/npu" in str(excinfo.value)


def test_gpu_without_cuda_names_the_profile():
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(PortcheckError) as excinfo:
        devices.require_backend("gpu")
    assert "CUDA" in str(excinfo.value) and "profiles/gpu" in str(excinfo.value)


def test_gpu_check_does_not_initialise_cuda_before_vllm_forks(monkeypatch):
    """Issue 8 finding 2: the availability check must use NVML, or vLLM's forked engine process cannot use CUDA."""
    import torch

    seen = {}

    def is_available():
        seen["nvml"] = os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK")
        return True

    monkeypatch.delenv("PYTORCH_NVML_BASED_CUDA_CHECK", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", is_available)
    devices.require_backend("gpu")
    assert seen["nvml"] == "1"
    assert not torch.cuda.is_initialized()


def test_cpu_needs_nothing_and_reports_rss():
    devices.require_backend("cpu")
    assert devices.peak_memory_bytes("cpu") > 10 * 2**20
