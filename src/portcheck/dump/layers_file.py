"""The per-layer capture of one target (for localising a divergence), from outputs.LayerStates: for each sequence
`hidden.<i>` float32 [L + 1, T, H] (the output of every captured decoder layer and, last, of the final norm) and,
where the engine exposes them, `state.<i>` float32 [G, heads, key dim, value dim] (each Gated DeltaNet layer's
recurrent state after the sequence). A target whose engine cannot capture them writes the file with no tensors and
the status and reason in its metadata, so the stage says why. Metadata is JSON in the safetensors header (no
pickle)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from portcheck.atomic import atomic_path
from portcheck.engines.outputs import LayerStates
from portcheck.errors import PortcheckError

FORMAT_NAME = "portcheck-layers"


def write_layers(path: str | Path, captured: LayerStates, meta: dict[str, Any], state_sequences: int = 1) -> None:
    """The GDN states of the last `state_sequences` sequences only (the corpus windows come last): at Qwen3.5-0.8B's
    shape one sequence's states are 18.9 MB in float32."""
    hidden, all_states = captured.hidden or [], captured.gdn_states or []
    states = all_states[len(all_states) - state_sequences:] if state_sequences else []
    kept = list(range(len(hidden) - len(states), len(hidden)))
    tensors = {f"hidden.{i}": np.ascontiguousarray(h, dtype=np.float32) for i, h in enumerate(hidden)}
    tensors.update({f"state.{i}": np.ascontiguousarray(s, dtype=np.float32) for i, s in enumerate(states)})
    meta = {**meta, "sequences": len(hidden), "status": captured.status, "not_captured": captured.reason,
            "layer_indices": captured.indices, "gdn": {
                "layers": captured.gdn_layers, "state_dtype": captured.gdn_state_dtype, "sequences": len(states),
                "sequence_indices": kept, "not_captured": captured.gdn_reason if hidden else captured.reason}}
    header = {"format": FORMAT_NAME, "meta": json.dumps(meta, sort_keys=True)}
    with atomic_path(path) as tmp:
        save_file(tensors or {"empty": np.zeros(0, np.float32)}, str(tmp), metadata=header)


def read_layers(path: str | Path) -> tuple[dict[str, Any], list[np.ndarray], list[np.ndarray]]:
    """(metadata, hidden per sequence, GDN states per sequence: empty where not captured)."""
    with safe_open(str(path), framework="np") as f:
        header = f.metadata() or {}
        if header.get("format") != FORMAT_NAME:
            raise PortcheckError(f"{path} is not a portcheck per-layer file; delete it and rerun rule dump_logits")
        meta = json.loads(header["meta"])
        gdn_count = (meta.get("gdn") or {}).get("sequences", 0)
        return (meta, [f.get_tensor(f"hidden.{i}") for i in range(meta["sequences"])],
                [f.get_tensor(f"state.{i}") for i in range(gdn_count)])
