"""Inside vLLM's worker: where a target diverges. Forward hooks on the decoder layers and final norm of the model
this worker built (portcheck.engines.layer_hooks) and, on each Gated DeltaNet layer, a hook that reads the
recurrent state the layer left in vLLM's state cache. The driver runs one sequence per step (so a forward pass
holds that sequence alone) and calls take(); write() puts the arrays in a safetensors file that the driver reads,
so only a path and a few numbers cross the process boundary.

Import-light like worker_extension: vLLM's worker imports it by dotted path."""

from __future__ import annotations

from typing import Any

from portcheck.engines.layer_hooks import LayerCapture, check_layer_indices, find_decoder_layers

_STATE: dict[str, Any] = {}


def graph_mode_reason(worker) -> str:
    """Why Python hooks and counters would not run as called ("" in eager mode)."""
    config = getattr(worker, "vllm_config", None)
    eager = getattr(getattr(config, "model_config", None), "enforce_eager", None)
    if eager:
        return ""
    return ("graph mode (enforce_eager off)" if eager is False
            else "the worker's vllm_config.model_config.enforce_eager is not readable: eager mode unknown")


def worker_model(worker):
    runner = getattr(worker, "model_runner", None)
    model = runner.get_model() if hasattr(runner, "get_model") else getattr(runner, "model", None)
    return model.unwrap() if hasattr(model, "unwrap") else model  # CUDA/ACL graph wrappers


def layer_count(worker) -> int | None:
    text_config = getattr(getattr(getattr(worker, "vllm_config", None), "model_config", None), "hf_text_config", None)
    return getattr(text_config, "num_hidden_layers", None)


def start(worker, indices: list[int] | None) -> dict:
    """Install the hooks; {"ok": False, "status", "reason"} where they cannot run."""
    stop()
    reason = graph_mode_reason(worker)
    if reason:
        return {"ok": False, "status": "not run", "reason": f"{reason}: forward hooks are traced into the graph, not "
                "called; set enforce_eager: true on this target to localise a divergence"}
    model = worker_model(worker)
    found = find_decoder_layers(model, layer_count(worker)) if model is not None else None
    if found is None:
        return {"ok": False, "status": "not determined",
                "reason": f"no decoder layer list and final norm found in {type(model).__name__} (vLLM worker)"}
    layers, norm = found
    try:
        chosen = check_layer_indices(indices, len(layers), type(model).__name__)
    except ValueError as exc:
        return {"ok": False, "status": "not run", "reason": str(exc)}
    gdn = [i for i in chosen if getattr(layers[i], "linear_attn", None) is not None]
    value_major, layout_reason = _state_layout()
    _STATE.update(capture=LayerCapture(layers, norm, chosen, residual_pair=True), hidden=[], states=[], latest={},
                  gdn=gdn, handles=[], value_major=value_major, gdn_reason=layout_reason, gdn_dtype=None)
    for index in gdn:
        _STATE["handles"].append(layers[index].linear_attn.register_forward_hook(_state_keeper(index)))
    return {"ok": True, "indices": chosen, "gdn_layers": gdn}


def _state_layout() -> tuple[bool, str]:
    """(whether vLLM keeps the GDN state as [heads, value dim, key dim], why it cannot be compared: "" when the
    layout is known). portcheck stores [heads, key dim, value dim] like transformers. Asked of vLLM's own shape
    calculator with distinct key (2) and value (3) sizes, not assumed per version."""
    try:
        from vllm.model_executor.layers.mamba.mamba_utils import MambaStateShapeCalculator

        _conv, temporal = MambaStateShapeCalculator.gated_delta_net_state_shape(1, 1, 1, 2, 3, 4)[:2]
    except Exception as exc:  # noqa: BLE001 - another vLLM line: the state is not compared, the layers still are
        return False, f"vLLM's GDN state layout is not readable ({type(exc).__name__}: {exc})"
    layout = tuple(temporal[-2:])
    return layout == (3, 2), "" if layout in ((3, 2), (2, 3)) else f"unknown GDN state layout {tuple(temporal)}"


def _state_keeper(index: int):
    def keep(module, _inputs, _output):
        if _STATE.get("gdn_reason"):
            return
        try:
            _STATE["latest"][index] = _read_state(module)
        except Exception as exc:  # noqa: BLE001 - say why, keep capturing the layers
            _STATE["gdn_reason"] = f"GDN state of layer {index} not readable: {type(exc).__name__}: {exc}"

    return keep


def _read_state(module):
    """The recurrent state this forward pass left for its (single) sequence, [heads, key dim, value dim]."""
    from vllm.forward_context import get_forward_context

    context = get_forward_context()
    metadata = context.attn_metadata
    if isinstance(metadata, dict):
        metadata = metadata.get(module.prefix)
    slots = getattr(metadata, "non_spec_state_indices_tensor", None)
    if slots is None or slots.dim() != 1 or slots.numel() != 1:
        raise RuntimeError("the forward pass does not hold exactly one sequence's state slot")
    cache = module.kv_cache
    if isinstance(cache[0], (list, tuple)):  # older vLLM: one (conv, ssm) pair per virtual engine
        cache = cache[getattr(context, "virtual_engine", 0)]
    state = cache[1][int(slots[0])]
    _STATE["gdn_dtype"] = str(state.dtype).replace("torch.", "")
    state = state.transpose(-1, -2) if _STATE["value_major"] else state
    return state.detach().float().cpu().numpy()


def take() -> dict:
    """Keep the sequence just run: its layer outputs and each GDN layer's state after it."""
    import numpy as np

    try:
        hidden = _STATE["capture"].take()
    except RuntimeError as exc:
        return {"tokens": None, "reason": f"per-layer capture in vLLM's worker: {exc}"}
    _STATE["hidden"].append(hidden)
    latest = _STATE["latest"]
    if not _STATE["gdn_reason"] and _STATE["gdn"]:
        _STATE["states"].append(np.stack([latest[i] for i in _STATE["gdn"]]))
    latest.clear()
    return {"tokens": int(hidden.shape[1])}


def write(path: str) -> dict:
    """Write what was kept (hidden.<i>, state.<i>) to `path`, remove the hooks and forget it."""
    from safetensors.numpy import save_file

    tensors = {f"hidden.{i}": h for i, h in enumerate(_STATE["hidden"])}
    gdn_reason = _STATE["gdn_reason"] or ("" if _STATE["gdn"] else "no Gated DeltaNet layer among those captured")
    if not gdn_reason:
        tensors.update({f"state.{i}": s for i, s in enumerate(_STATE["states"])})
    save_file(tensors, path)
    facts = {"sequences": len(_STATE["hidden"]), "gdn_layers": _STATE["gdn"], "gdn_state_dtype": _STATE["gdn_dtype"],
             "gdn_reason": gdn_reason}
    stop()
    return facts


def stop() -> None:
    if _STATE.get("capture") is not None:
        _STATE["capture"].remove()
    for handle in _STATE.get("handles", []):
        handle.remove()
    _STATE.clear()
