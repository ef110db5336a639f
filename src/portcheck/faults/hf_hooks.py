"""The hf side of the fault plugin: forward hooks on transformers' modules for the fault classes that apply to a
model run in one piece (a layer's output off); the state faults need a carried state, which the hf engine never
splits, so they stay vLLM's. The reference runs on hf too, so a fault reaches an hf engine only when
PORTCHECK_FAULT_TARGET names its target."""

from __future__ import annotations

import os

from portcheck.faults import catalog as faults
from portcheck.errors import PortcheckError

HF_FAULTS = ("layer_scale", "layer_noise", "vision_noise")
TARGET_ENV = "PORTCHECK_FAULT_TARGET"


def install(model, target: str) -> str | None:
    """Hook the fault PORTCHECK_FAULT names into `model` if PORTCHECK_FAULT_TARGET names `target`; returns the
    fault's description, or None."""
    fault = faults.active()
    if fault is None or os.environ.get(TARGET_ENV, "").strip() != target:
        return None
    if fault.name not in HF_FAULTS:
        raise PortcheckError(f"fault {fault} has no hf equivalent (hf takes {', '.join(HF_FAULTS)}); unset "
                             f"{faults.ENV} for the hf targets")
    if fault.name == "vision_noise":
        return _install_vision(model, fault)
    layers = getattr(getattr(model.model, "language_model", model.model), "layers")
    if not 0 <= fault.where < len(layers) or not hasattr(layers[fault.where], "linear_attn"):
        raise PortcheckError(f"fault {fault}: decoder layer {fault.where} is not a Gated DeltaNet layer of this model")
    layers[fault.where].linear_attn.register_forward_hook(
        lambda module, args, output: faults.spoiled_output(fault, output))
    return str(fault)


def _install_vision(model, fault) -> str | None:
    """Noise on one vision block's output; inert (None) in a text-only run, which has no vision tower to spoil."""
    visual = getattr(model.model, "visual", None)
    if visual is None:
        return None
    if not 0 <= fault.where < len(visual.blocks):
        raise PortcheckError(f"fault {fault}: the vision tower has blocks 0-{len(visual.blocks) - 1}")
    visual.blocks[fault.where].register_forward_hook(lambda module, args, output: faults.spoiled_output(fault, output))
    return str(fault)
