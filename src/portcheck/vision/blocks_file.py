"""The vision tower's per-block capture of one target beside its image-prompt dump: per prompt `block.<p>` float32
[blocks, patches, H] (each vision block's output), `merger.<p>` [image tokens, text H] and `positions.<p>` int64 [3, T]
(the multimodal rotary ids the language model received). Metadata is JSON in the safetensors header (no pickle); a
target that could not run the check writes the file with no tensors and the reason."""

from __future__ import annotations

import json

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from portcheck.atomic import atomic_path
from portcheck.engines.outputs import vision_arrays, vision_tensors
from portcheck.errors import PortcheckError

BLOCKS_FORMAT = "portcheck-vision-blocks"


def write_not_run(rows_path, blocks_path, reason: str, status: str = "not run") -> None:
    """Both files, holding only the status ("not run", or "failed": the engine could not run the image prompts)
    and the reason (compare_vision reads them from the blocks file)."""
    meta = {"status": status, "reason": reason, "prompts": []}
    for path, name in ((rows_path, "portcheck-vision-not-run"), (blocks_path, BLOCKS_FORMAT)):
        with atomic_path(path) as tmp:
            save_file({"empty": np.zeros(0, np.float32)}, str(tmp),
                      metadata={"format": name, "meta": json.dumps(meta, sort_keys=True)})


def write_blocks(path, scored, meta: dict) -> None:
    """Per prompt: `block.<p>` [blocks, patches, H], `merger.<p>` [tokens, text H], `positions.<p>` [3, T]."""
    tensors = vision_arrays((s.blocks, s.merger, s.position_ids) for s in scored)
    meta = {**meta, "status": "ok"}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": BLOCKS_FORMAT, "meta": json.dumps(meta, sort_keys=True)})


def read_blocks(path) -> tuple[dict, list[dict]]:
    """(metadata, per prompt {"blocks", "merger", "positions" (None where absent)})."""
    with safe_open(str(path), framework="np") as f:
        header = f.metadata() or {}
        if header.get("format") != BLOCKS_FORMAT:
            raise PortcheckError(f"{path} is not a portcheck vision-blocks file; delete it and rerun rule dump_vision")
        meta = json.loads(header["meta"])
        return meta, vision_tensors(f, len(meta["prompts"]))
