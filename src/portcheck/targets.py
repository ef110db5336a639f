"""Target names: one (device, engine, dtype) run, spelled `<device>-<engine>-<dtype>`."""

from __future__ import annotations

import re
from dataclasses import dataclass

from portcheck.errors import PortcheckError

DEVICES = ("cpu", "gpu", "npu")
ENGINES = ("hf", "vllm")
# The package module (or subpackage) of each engine: a target runs only its own (rules/common.smk code inputs).
ENGINE_MODULES = {"hf": "engines.hf", "vllm": "engines.vllm"}
DTYPES = ("fp32", "bf16", "fp16")
TARGET_PATTERN = rf"({'|'.join(DEVICES)})-({'|'.join(ENGINES)})-({'|'.join(DTYPES)})"

# The target name says "gpu" (what users call it); torch calls the device "cuda".
TORCH_DEVICE = {"cpu": "cpu", "gpu": "cuda", "npu": "npu"}
TORCH_DTYPE_NAME = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


@dataclass(frozen=True)
class Target:
    name: str
    device: str  # cpu | gpu | npu
    engine: str  # hf | vllm
    dtype: str  # fp32 | bf16 | fp16

    @property
    def torch_device(self) -> str:
        return TORCH_DEVICE[self.device]

    @property
    def torch_dtype_name(self) -> str:
        return TORCH_DTYPE_NAME[self.dtype]


def parse_target(name: str) -> Target:
    match = re.fullmatch(TARGET_PATTERN, name)
    if not match:
        raise PortcheckError(
            f"target name {name!r} is not <device>-<engine>-<dtype> with device in {DEVICES}, "
            f"engine in {ENGINES}, dtype in {DTYPES} (e.g. 'cpu-hf-fp32', 'npu-vllm-bf16')"
        )
    device, engine, dtype = match.groups()
    return Target(name, device, engine, dtype)
