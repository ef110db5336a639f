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
# The bf16 noise floor: the reference's engine and device, rounding in bf16 only; what any bf16 port adds at the
# least (the "x bf16 floor" columns, the per-layer multiples).
FLOOR_TARGET = "cpu-hf-bf16"


def floor_absence(target: str, reference: str, enabled: list[str]) -> str | None:
    """Why `target`'s layers are compared with no floor; None: FLOOR_TARGET's layers are its floor. The floor
    target itself gets no floor (its added error is the unit), not itself (1.0x everywhere would prove nothing)."""
    if target == FLOOR_TARGET:
        return f"{target} is the floor: its added error is the unit of the other targets' multiples"
    if reference == FLOOR_TARGET:
        return f"no floor: the reference is {FLOOR_TARGET}"
    if FLOOR_TARGET not in enabled:
        return f"no floor: {FLOOR_TARGET} is disabled"
    return None


def references_off(targets: list[str], reference: str, section: str, settings: dict) -> dict[str, str]:
    """{target: the setting that turns the config section's measurement off for it}: the bf16 floor's where
    `<section>.floor` is false (when it is not the reference), the reference's where `<section>.reference` is (a
    section without the key keeps it). A porting engineer measures the port; the floor is a second reference (the
    verdict's bf16 noise unit), not a port."""
    off = {FLOOR_TARGET: f"{section}.floor is false"} if not settings.get("floor", True) and reference != FLOOR_TARGET \
        else {}
    if not settings.get("reference", True):
        off[reference] = f"{section}.reference is false"
    return {t: off[t] for t in targets if t in off}


def without_toggles(settings: dict) -> dict:
    """A section's settings for the work itself: references_off's toggles say whom it is for, not how it runs."""
    return {key: value for key, value in settings.items() if key not in ("reference", "floor")}


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
