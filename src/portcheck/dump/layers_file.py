"""The per-layer hidden states of one target (for localising a divergence): for each sequence a float32 tensor
[L + 1, T, H], the output of every decoder layer and, last, of the final norm. A target whose engine cannot
capture them writes the file with no tensors and the reason in its metadata, so the stage says "not run" and why.
Metadata is JSON in the safetensors header (no pickle)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from portcheck.atomic import atomic_path
from portcheck.errors import PortcheckError

FORMAT_NAME = "portcheck-layers"


def write_layers(path: str | Path, states: list[np.ndarray] | None, meta: dict[str, Any]) -> None:
    """states: per sequence [L + 1, T, H]; None with meta["not_captured"] naming why."""
    tensors = {f"hidden.{i}": np.ascontiguousarray(s, dtype=np.float32) for i, s in enumerate(states or [])}
    header = {"format": FORMAT_NAME, "meta": json.dumps({**meta, "sequences": len(tensors)}, sort_keys=True)}
    with atomic_path(path) as tmp:
        save_file(tensors or {"empty": np.zeros(0, np.float32)}, str(tmp), metadata=header)


def read_layers(path: str | Path) -> tuple[dict[str, Any], list[np.ndarray]]:
    with safe_open(str(path), framework="np") as f:
        header = f.metadata() or {}
        if header.get("format") != FORMAT_NAME:
            raise PortcheckError(f"{path} is not a portcheck per-layer file; delete it and rerun rule dump_logits")
        meta = json.loads(header["meta"])
        return meta, [f.get_tensor(f"hidden.{i}") for i in range(meta["sequences"])]
