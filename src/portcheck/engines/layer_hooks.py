"""Every decoder layer's output, and the final norm's, captured with forward hooks: one code path for the hf
engine and for vLLM's worker (where it runs inside the worker process, so it stays import-light: no torch, vllm
or heavy portcheck module at top level).

What a layer hands on is the residual stream. transformers' layers return it (a tensor, or a tuple whose first
element it is); vLLM's return (hidden_states, residual) and add them in the next layer's fused add-norm, so
their stream is the sum. Final norms return the normed tensor (vLLM: with the residual beside it)."""

from __future__ import annotations

from typing import Any

import numpy as np


def find_decoder_layers(model, count: int | None) -> tuple[list, Any] | None:
    """(decoder layers, final norm) of a causal LM: the first module with a `layers` list of `count` entries
    (any length when count is None) and a sibling `norm`; None where the model is laid out otherwise."""
    for _name, module in model.named_modules():
        layers, norm = getattr(module, "layers", None), getattr(module, "norm", None)
        if layers is None or norm is None or not hasattr(layers, "__len__"):
            continue
        if count is None or len(layers) == count:
            return list(layers), norm
    return None


def check_layer_indices(indices: list[int] | None, count: int, model: str) -> list[int]:
    """The decoder-layer indices to capture (None: all), refused when one is outside the model."""
    if indices is None:
        return list(range(count))
    outside = [i for i in indices if not 0 <= i < count]
    if outside:
        raise ValueError(f"layers.indices {outside} outside {model}: it has {count} decoder layers (0-{count - 1}); "
                         "remove them, or set layers.indices to null for every layer")
    return sorted(set(indices))


def stream_tensor(output, residual_pair: bool):
    """The residual stream a layer (or the final norm, residual_pair False) hands on, as [T, H]."""
    if isinstance(output, (tuple, list)):
        first = output[0]
        second = output[1] if len(output) > 1 else None
        tensor = first + second if residual_pair and second is not None and second.shape == first.shape else first
    else:
        tensor = output
    return tensor[0] if tensor.dim() == 3 else tensor


class LayerCapture:
    """Forward hooks on the chosen decoder layers and the final norm. Every forward pass adds one block per
    module; take() joins the blocks of the passes since the last take (a chunked prefill runs several) into one
    float32 array [L + 1, T, H] for the sequence just run."""

    def __init__(self, layers: list, norm, indices: list[int], residual_pair: bool):
        self._blocks: list[list] = [[] for _ in range(len(indices) + 1)]
        self._handles = []
        for slot, module in enumerate([*(layers[i] for i in indices), norm]):
            pair = residual_pair and module is not norm
            self._handles.append(module.register_forward_hook(self._keeper(slot, pair)))

    def _keeper(self, slot: int, pair: bool):
        def keep(_module, _inputs, output):
            self._blocks[slot].append(stream_tensor(output, pair).detach().float().cpu().numpy())

        return keep

    def take(self) -> np.ndarray:
        joined = [np.concatenate(blocks, axis=0) if blocks else None for blocks in self._blocks]
        for blocks in self._blocks:
            blocks.clear()
        if any(block is None for block in joined):
            raise RuntimeError("a hooked layer did not run in this forward pass")
        return np.stack(joined)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
