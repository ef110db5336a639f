"""Inside vLLM's worker: the vision tower's per-block capture of image prompts, as engines/hf.py's _VisionCapture
does on transformers. Every vision block's and the merger's output of the model this worker built (each call's
output kept, [patches, H] whatever vLLM's extra batch axis), the vision tower's time, and the multimodal rotary
positions the model receives ([3, T] under mrope). Wrapped `forward`s, not forward hooks: vLLM's
support_torch_compile gives the vision blocks a __call__ that calls forward directly, so their hooks never fire
(measured on 0.32: the merger's hook fired, the blocks' did not). The driver runs one image prompt per step, calls
take() after each, and write() puts the arrays in a safetensors file, so only a path and a few numbers cross the
process boundary.

Import-light like worker_extension: vLLM's worker imports it by dotted path."""

from __future__ import annotations

import time
from typing import Any

from portcheck.engines.vllm.worker_layers import graph_mode_reason, worker_model

_STATE: dict[str, Any] = {}


def start(worker) -> dict:
    """Wrap the tower's and the model's forwards; {"ok": False, "reason"} where they would not be called."""
    stop()
    reason = graph_mode_reason(worker)
    if reason:
        return {"ok": False, "reason": f"{reason}: Python wrappers are traced into the graph, not called"}
    model = worker_model(worker)
    visual = getattr(model, "visual", None)
    if visual is None or not hasattr(visual, "blocks") or not hasattr(visual, "merger"):
        return {"ok": False, "reason": f"no vision tower with blocks and a merger in {type(model).__name__}"}
    _STATE.update(blocks=[[] for _ in visual.blocks], merger=[], positions=None, seconds=0.0, kept=[], wrapped=[])
    for index, block in enumerate(visual.blocks):
        _wrap(block, after=_block_keeper(index))
    _wrap(visual.merger, after=lambda output: _STATE["merger"].append(_rows(output)))
    _wrap(visual, before=_start_clock, after=_stop_clock)
    _wrap(model, before=_keep_positions)
    return {"ok": True, "tower_class": type(visual).__name__, "blocks": len(visual.blocks),
            "patch_embedding": type(getattr(getattr(visual, "patch_embed", None), "proj", None)).__name__}


def _wrap(module, before=None, after=None) -> None:
    """module.forward, as an instance attribute, calling before(args, kwargs) and after(output) around the class's."""
    original = module.forward

    def forward(*args, **kwargs):
        if before:
            before(args, kwargs)
        output = original(*args, **kwargs)
        if after:
            after(output)
        return output

    module.forward = forward
    _STATE["wrapped"].append(module)


def _rows(output):
    tensor = output[0] if isinstance(output, (tuple, list)) else output
    return tensor.detach().float().reshape(-1, tensor.shape[-1]).cpu().numpy()


def _block_keeper(index: int):
    return lambda output: _STATE["blocks"][index].append(_rows(output))


def _start_clock(_args, _kwargs):
    _STATE["started"] = time.perf_counter()


def _stop_clock(_output):
    _STATE["seconds"] += time.perf_counter() - _STATE["started"]


def _keep_positions(args, kwargs):
    positions = kwargs.get("positions", args[1] if len(args) > 1 else None)
    if positions is not None:
        _STATE["positions"] = positions.detach().cpu().numpy()


def take(tokens: int) -> dict:
    """Keep the prompt just run (its first `tokens` positions): the encoder's calls concatenated per block (vLLM
    may encode a prompt's images in one call or several), the merger's, the positions and the tower's time."""
    import numpy as np

    calls = [len(c) for c in _STATE["blocks"]] + [len(_STATE["merger"])]
    if not all(calls):
        return {"ok": False, "reason": f"the vision tower did not run whole for this prompt (calls per block and the "
                                       f"merger: {calls}): its encoder output came from a cache, or the image never "
                                       "reached the model"}
    positions = _STATE["positions"]
    kept = {"blocks": [np.concatenate(calls) for calls in _STATE["blocks"]],
            "merger": np.concatenate(_STATE["merger"]), "seconds": _STATE["seconds"],
            "positions": None if positions is None or positions.ndim != 2 else positions[:, :tokens].astype(np.int64)}
    _STATE["kept"].append(kept)
    _STATE.update(blocks=[[] for _ in _STATE["blocks"]], merger=[], positions=None, seconds=0.0)
    return {"ok": True, "patches": int(kept["blocks"][0].shape[0]), "seconds": kept["seconds"],
            "positions": kept["positions"] is not None}


def write(path: str) -> dict:
    """block.<p> [blocks, patches, H], merger.<p>, positions.<p> where seen (outputs.vision_arrays, the dump's
    layout); then remove the wrappers."""
    import numpy as np
    from safetensors.numpy import save_file

    from portcheck.engines.outputs import vision_arrays

    kept = _STATE.get("kept", [])
    tensors = vision_arrays((k["blocks"], k["merger"], k["positions"]) for k in kept)
    save_file(tensors or {"empty": np.zeros(0, np.float32)}, path)
    facts = {"prompts": len(kept), "seconds": [k["seconds"] for k in kept]}
    stop()
    return facts


def stop() -> None:
    for module in _STATE.get("wrapped", []):
        del module.forward  # the class's forward again
    _STATE.clear()
