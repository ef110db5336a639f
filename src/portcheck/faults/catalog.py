"""The fault classes: the classes of bug vllm-ascend's history shows for this architecture, injected into a
working engine so that the checks' power is measured, not assumed (`make calibrate`, the fault tests).

Inert unless the environment names one fault: PORTCHECK_FAULT=<name>:<magnitude>[:<where>]. The vLLM side is a
general plugin (entry point `vllm.general_plugins`, `portcheck.faults.vllm_plugin`), loaded in every vLLM process
as vllm-ascend's patches are; the hf side is a set of forward hooks (`portcheck.faults.hf_hooks`) where a class
applies to the reference engine too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from portcheck.errors import PortcheckError

ENV = "PORTCHECK_FAULT"


@dataclass(frozen=True)
class FaultClass:
    name: str
    what: str  # the port bug it stands for
    magnitude: str  # what the number means
    where: str | None  # what the optional third field means, with its default
    default_where: int | None
    engines: tuple[str, ...]


CLASSES = {fault.name: fault for fault in (
    FaultClass("state_dropped", "a prefill chunk that ignores the state it should start from, recurrent and "
               "convolution (vllm-ascend's fused prefill kernel)", "decoder layers hit, from layer 0 (99: all)",
               None, None, ("vllm",)),
    FaultClass("state_decay", "a Gated DeltaNet recurrent state decayed on its way into a prefill chunk",
               "share of the state lost", None, None, ("vllm",)),
    FaultClass("state_rounding", "a carried Gated DeltaNet state rounded before the prefill that continues it (the "
               "fused kernel's bf16 initial state)", "mantissa bits kept (7: bf16)", None, None, ("vllm",)),
    FaultClass("decode_state", "a decode-only recurrent-state error: the state leaks at every decode step",
               "share of the state lost per step", None, None, ("vllm",)),
    FaultClass("layer_scale", "one layer's Gated DeltaNet kernel slightly off (a scale)", "relative error of the "
               "layer's output", "decoder layer (default 4)", 4, ("vllm", "hf")),
    FaultClass("layer_noise", "one layer's Gated DeltaNet kernel wrong (seeded noise)", "noise as a share of the "
               "output's standard deviation", "decoder layer (default 5)", 5, ("vllm", "hf")),
    FaultClass("rope_offset", "full attention wrong beyond N tokens (rotary positions offset from position N)",
               "positions of offset", "first position offset (default 128)", 128, ("vllm",)),
    FaultClass("batch_noise", "an error that depends on batch composition (a kernel chosen by batch size, wrong "
               "when 3 or more sequences share a decode pass)", "noise as a share of the output's standard "
               "deviation", "largest batch affected (default 64)", 64, ("vllm",)),
    FaultClass("mtp_noise", "the MTP drafter computing wrong (its attention layer run with the wrong spec-decode "
               "metadata, say): seeded noise on the hidden states it drafts from", "noise as a share of their "
               "standard deviation", None, None, ("vllm",)),
    FaultClass("vision_noise", "the vision tower computing wrong (a block rewritten for the device, as vllm-ascend "
               "rewrote the patch embedding's Conv3d): seeded noise on one vision block's output", "noise as a share "
               "of the output's standard deviation", "vision block (default 0)", 0, ("vllm", "hf")),
)}


@dataclass(frozen=True)
class Fault:
    name: str
    magnitude: float
    where: int | None

    def __str__(self) -> str:
        return f"{self.name}:{self.magnitude:g}" + (f":{self.where}" if self.where is not None else "")


def parse(text: str) -> Fault:
    name, _, rest = text.strip().partition(":")
    fault_class = CLASSES.get(name)
    if fault_class is None:
        raise PortcheckError(f"{ENV}={text!r}: unknown fault {name!r}; one of {', '.join(CLASSES)}")
    magnitude_text, _, where_text = rest.partition(":")
    try:
        magnitude = float(magnitude_text)
        where = int(where_text) if where_text else fault_class.default_where
    except ValueError:
        raise PortcheckError(f"{ENV}={text!r}: write <name>:<magnitude>[:<where>] with a number as magnitude "
                             f"({fault_class.magnitude}) and an integer as where ({fault_class.where})") from None
    if where_text and fault_class.where is None:
        raise PortcheckError(f"{ENV}={text!r}: {name} takes no third field")
    return Fault(name, magnitude, where)


def active() -> Fault | None:
    """The fault the environment names, or None (the plugin and hooks are then inert)."""
    text = os.environ.get(ENV, "").strip()
    return parse(text) if text else None


def spoiled_output(fault: Fault, output, seed: int = 0):
    """A layer's output as a layer fault leaves it: scaled (layer_scale), or with seeded Gaussian noise of
    `magnitude` times its standard deviation (layer_noise, batch_noise)."""
    import torch

    if fault.name == "layer_scale":
        return output * (1.0 + fault.magnitude)
    noise = torch.randn(output.shape, generator=torch.Generator().manual_seed(seed))
    return output + (noise * fault.magnitude * output.float().std()).to(output.dtype)


def round_mantissa(tensor, bits: int):
    """`tensor` (float32) rounded to `bits` explicit mantissa bits, to nearest even (bf16 keeps 7)."""
    import torch

    drop = 23 - int(bits)
    if drop <= 0:
        return tensor
    as_int = tensor.contiguous().view(torch.int32)
    half = (1 << (drop - 1)) - 1
    odd = (as_int >> drop) & 1
    rounded = ((as_int + half + odd) >> drop) << drop
    return rounded.view(torch.float32)


def adaptation_item(injected: bool = True) -> dict:
    """The adaptation checklist's line for a run with an injected fault (failed: this run is a drill, not the
    port), or nothing."""
    fault = active()
    if fault is None or not injected:
        return {}
    return {"injected_fault": {"value": str(fault), "status": "failed",
                               "note": f"{ENV} is set: {CLASSES[fault.name].what}; unset it for a real report"}}


def caught_text(row: dict) -> str:
    """A detection row's outcome (make calibrate): the checks that failed, else 'not caught' with the checks the fault
    left inconclusive, which keep a report on such a port from passing."""
    if row.get("caught_by"):
        return ", ".join(row["caught_by"])
    unsure = ", ".join(row.get("inconclusive_on") or [])
    return f"not caught (inconclusive: {unsure})" if unsure else "not caught"
