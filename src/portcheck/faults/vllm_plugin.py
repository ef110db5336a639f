"""The fault plugin for vLLM (entry point `vllm.general_plugins`): patches vLLM the way vllm-ascend does, without
replacing its classes. It rebinds QwenGatedDeltaNetAttention.forward_cpu, Qwen3NextAttention._project_qkv_gate,
Qwen3_5MultiTokenPredictor.forward (the MTP drafter) and Qwen3_VisionBlock.forward (the vision tower's blocks) and
swaps a module-level GDN kernel of vLLM's CPU op, each to a function of this module that calls the original.
Inert unless PORTCHECK_FAULT names a fault (portcheck.faults.catalog); unpatch() restores vLLM.

The state faults act on vLLM's own state cache (layer.kv_cache[1]) before the CPU GDN kernel reads it: at a
prefill that continues a carried state (a prefill split into chunks, or a prefix-cache hit) or at each decode step;
a prefill in one piece never carries a state, so it stays exact.
"""

from __future__ import annotations

from portcheck.faults import catalog as faults
from portcheck.errors import PortcheckError

_ORIGINALS: dict = {}
_FAULT: list = []  # the active Fault, set at register

# The module-level kernel of vLLM's CPU GDN op that is swapped, the first this vLLM line has: the prefill + decode
# of the 0.32 line (the state faults need it), the causal conv1d that the 0.23 line's op calls.
KERNEL_SLOTS = ("_cpu_gdn_attention_nonspec", "causal_conv1d_torch")
STATE_FAULTS = ("state_dropped", "state_decay", "state_rounding", "decode_state")


def _fault():
    return _FAULT[0] if _FAULT else None


def forward_cpu(self, hidden_states, *out):
    """vLLM 0.32's forward_cpu returns the output; 0.23's writes it into its `output` argument."""
    result = _ORIGINALS["forward_cpu"](self, hidden_states, *out)
    fault = _fault()
    spoil = _output_fault(fault, self.prefix, hidden_states.shape[0])
    if spoil is None:
        return result
    output = out[0] if out else result
    spoiled = spoil(output)
    if out:
        output.copy_(spoiled)
        return result
    return spoiled


def _output_fault(fault, prefix: str, tokens: int):
    """The change a layer-output fault makes to this layer's output in this pass, or None."""
    if fault is None:
        return None
    if fault.name in ("layer_scale", "layer_noise") and f"layers.{fault.where}." in f"{prefix}.":
        return lambda output: faults.spoiled_output(fault, output)
    if fault.name == "batch_noise" and 2 < tokens <= fault.where:
        return lambda output: faults.spoiled_output(fault, output, seed=tokens)
    return None


def project_qkv_gate(self, qkv, positions):
    """Full attention with its rotary positions offset from position `where` on (rope_offset)."""
    fault = _fault()
    if fault is not None and fault.name == "rope_offset":
        positions = positions + int(fault.magnitude) * (positions >= fault.where).to(positions.dtype)
    return _ORIGINALS["project_qkv_gate"](self, qkv, positions)


def mtp_forward(self, *args, **kwargs):
    """The MTP drafter with noise on the hidden states it drafts from (mtp_noise). Noise on the target's hidden
    states it is fed instead moved the embedded model's acceptance by 2 points at a noise as large as the states:
    its head drafts mostly from the token embedding."""
    output = _ORIGINALS["mtp_forward"](self, *args, **kwargs)
    fault = _fault()
    if fault is not None and fault.name == "mtp_noise" and hasattr(output, "shape"):
        return faults.spoiled_output(fault, output, seed=output.shape[0])
    return output


def vision_block_forward(self, *args, **kwargs):
    """A vision block with seeded noise on its output where vision_noise names it (inert in a text-only run: the
    tower does not run)."""
    output = _ORIGINALS["vision_forward"](self, *args, **kwargs)
    fault = _fault()
    if fault is not None and fault.name == "vision_noise" and vision_block_index(self) == fault.where:
        return faults.spoiled_output(fault, output)
    return output


def vision_block_index(block) -> int | None:
    """The block's index in the tower, from the prefix vLLM gave its linear layers (visual.blocks.<i>.mlp...)."""
    for module in block.modules():
        prefix = getattr(module, "prefix", None)
        if isinstance(prefix, str) and "blocks." in prefix:
            return int(prefix.split("blocks.")[1].split(".")[0])
    return None


def _vision_block():
    try:
        from vllm.model_executor.models import qwen3_vl
    except ImportError:
        return None
    return getattr(qwen3_vl, "Qwen3_VisionBlock", None)


def kernel_slot() -> str:
    from vllm.model_executor.layers.mamba.ops.cpu import gdn_attention

    return next(name for name in KERNEL_SLOTS if hasattr(gdn_attention, name))


def swapped_kernel(*args, **kwargs):
    slot = next(iter(_ORIGINALS["kernel"]))
    fault = _fault()
    if slot != "_cpu_gdn_attention_nonspec" or fault is None or fault.name not in STATE_FAULTS:
        return _ORIGINALS["kernel"][slot](*args, **kwargs)
    metadata = args[1]
    shared = metadata.has_initial_state.clone() if metadata.has_initial_state is not None else None
    _spoil_states(fault, args[0], metadata)
    try:
        return _ORIGINALS["kernel"][slot](*args, **kwargs)
    finally:  # the metadata is every layer's: the next layer sees what vLLM set
        if shared is not None:
            metadata.has_initial_state.copy_(shared)


def _spoil_states(fault, layer, metadata) -> None:
    """The carried states the kernel is about to read, changed in place as the fault says."""
    import torch

    indices = metadata.non_spec_state_indices_tensor
    decodes, prefills = metadata.num_decodes, metadata.num_prefills
    if fault.name == "state_dropped":
        if prefills > 0 and _layer_index(layer.prefix) < fault.magnitude:
            metadata.has_initial_state[decodes:decodes + prefills] = False
        return
    if fault.name == "decode_state":
        carried = indices[:decodes]
    elif prefills > 0:
        carried = indices[decodes:decodes + prefills][metadata.has_initial_state[decodes:decodes + prefills]]
    else:
        return
    if carried.numel() == 0:
        return
    states = layer.kv_cache[1]
    with torch.no_grad():
        if fault.name == "state_rounding":
            states[carried] = faults.round_mantissa(states[carried].float(), int(fault.magnitude)).to(states.dtype)
        else:
            states[carried] = states[carried] * (1.0 - fault.magnitude)


def _check_applies(fault) -> None:
    """Refuse a fault this vLLM line has no place for: a run it could not spoil would read as a fault not caught."""
    from vllm.model_executor.models import qwen3_next

    if fault.name in STATE_FAULTS and kernel_slot() != KERNEL_SLOTS[0]:
        raise PortcheckError(f"fault {fault}: the state faults act in vLLM's CPU GDN kernel {KERNEL_SLOTS[0]}, "
                             f"which this vLLM line lacks (vLLM CPU 0.32 has it)")
    if fault.name == "mtp_noise" and _mtp_predictor() is None:
        raise PortcheckError(f"fault {fault}: this vLLM line has no Qwen3_5MultiTokenPredictor to feed noise to")
    if fault.name == "vision_noise" and _vision_block() is None:
        raise PortcheckError(f"fault {fault}: this vLLM line has no Qwen3_VisionBlock to feed noise to")
    if fault.name == "rope_offset" and not hasattr(qwen3_next.Qwen3NextAttention, "_project_qkv_gate"):
        raise PortcheckError(f"fault {fault}: this vLLM line's Qwen3NextAttention has no _project_qkv_gate to "
                             f"offset positions in (vLLM CPU 0.32 has it)")


def set_fault(text: str) -> dict:
    """Switch the active fault of a patched process ("" or "none": no fault, patches stay)."""
    if not _ORIGINALS:
        return {"ok": False, "reason": f"the fault plugin is not patched in: start the engine with {faults.ENV} set"}
    fault = None if text.strip() in ("", "none") else faults.parse(text)
    if fault is not None:
        _check_applies(fault)
    _FAULT[:] = [fault] if fault else []
    return {"ok": True, "fault": str(fault) if fault else None}


def _layer_index(prefix: str) -> int:
    return int(prefix.split("layers.")[1].split(".")[0])


def register() -> None:
    fault = faults.active()
    if fault is None or _ORIGINALS:
        return
    from vllm.model_executor.layers.mamba.gdn import qwen_gdn_linear_attn
    from vllm.model_executor.layers.mamba.ops.cpu import gdn_attention
    from vllm.model_executor.models import qwen3_next

    _check_applies(fault)
    _patch_mtp()
    _patch_vision()
    slot = kernel_slot()
    attention = qwen3_next.Qwen3NextAttention
    _FAULT[:] = [fault]
    gdn = qwen_gdn_linear_attn.QwenGatedDeltaNetAttention
    _ORIGINALS["forward_cpu"] = gdn.forward_cpu
    _ORIGINALS["kernel"] = {slot: getattr(gdn_attention, slot)}
    gdn.forward_cpu = forward_cpu
    setattr(gdn_attention, slot, swapped_kernel)
    if hasattr(attention, "_project_qkv_gate"):
        _ORIGINALS["project_qkv_gate"] = attention._project_qkv_gate
        attention._project_qkv_gate = project_qkv_gate


def _mtp_predictor():
    """vLLM's Qwen3.5 MTP module class, or None on a line without it."""
    try:
        from vllm.model_executor.models import qwen3_5_mtp
    except ImportError:
        return None
    return getattr(qwen3_5_mtp, "Qwen3_5MultiTokenPredictor", None)


def _patch_mtp() -> None:
    predictor = _mtp_predictor()
    if predictor is not None:
        _ORIGINALS["mtp_forward"] = predictor.forward
        predictor.forward = mtp_forward


def _patch_vision() -> None:
    block = _vision_block()
    if block is not None:
        _ORIGINALS["vision_forward"] = block.forward
        block.forward = vision_block_forward


def unpatch() -> None:
    if not _ORIGINALS:
        return
    from vllm.model_executor.layers.mamba.gdn import qwen_gdn_linear_attn
    from vllm.model_executor.layers.mamba.ops.cpu import gdn_attention
    from vllm.model_executor.models import qwen3_next

    qwen_gdn_linear_attn.QwenGatedDeltaNetAttention.forward_cpu = _ORIGINALS.pop("forward_cpu")
    for slot, original in _ORIGINALS.pop("kernel").items():
        setattr(gdn_attention, slot, original)
    if "mtp_forward" in _ORIGINALS:
        _mtp_predictor().forward = _ORIGINALS.pop("mtp_forward")
    if "vision_forward" in _ORIGINALS:
        _vision_block().forward = _ORIGINALS.pop("vision_forward")
    if "project_qkv_gate" in _ORIGINALS:
        qwen3_next.Qwen3NextAttention._project_qkv_gate = _ORIGINALS.pop("project_qkv_gate")
    _FAULT.clear()
