"""Rule compare_vision: a target's image prompts against the reference's. The text rows after the images are
compared as the seed prompts are (same metrics, thresholds and verdict); the image tokens' count and positions and
the multimodal rotary position ids must be identical (a mismatch fails); each vision block's output and the merger's
are compared per patch (cosine, relative L2, MaxAbsErr) with the per-layer thresholds, naming the first block over
them. A target whose engine cannot take images yet is written not run, with the reason."""

from __future__ import annotations

from typing import Any

import numpy as np

from portcheck.compare.compare import compare_files, json_ready
from portcheck.vision.blocks_file import read_blocks

TINY = 1e-12


def not_run(reason: str) -> dict[str, Any]:
    return {"status": "not run", "reason": reason}


def compare_vision(ref_rows, tgt_rows, ref_blocks, tgt_blocks, thresholds: dict, tie_tolerance: float,
                   localise: dict) -> dict[str, Any]:
    ref_meta, ref_prompts = read_blocks(ref_blocks)
    tgt_meta, tgt_prompts = read_blocks(tgt_blocks)
    for meta in (ref_meta, tgt_meta):
        if meta.get("status") == "not run":
            return not_run(meta["reason"])
    text = compare_files(ref_rows, tgt_rows, thresholds, tie_tolerance)
    layout = layout_check(ref_meta, tgt_meta, ref_prompts, tgt_prompts)
    blocks = block_rows(ref_prompts, tgt_prompts, localise)
    first = next((row["name"] for row in blocks if row["over"]), None)
    status = text["verdict"]["status"]
    if not layout["same"]:
        status = "fail"
    return json_ready({
        "status": status, "text": text, "layout": layout, "blocks": blocks, "first_divergent": first,
        "thresholds": localise, "prompts": ref_meta["prompts"],
        "image_grid_thw": ref_meta["vision"]["image_grid_thw"],
        "tower": {side: {k: meta["vision"].get(k) for k in ("tower_class", "blocks", "patch_embedding",
                                                            "encode_seconds", "run_seconds")}
                  for side, meta in (("reference", ref_meta), ("target", tgt_meta))}})


def layout_check(ref_meta: dict, tgt_meta: dict, ref_prompts: list[dict], tgt_prompts: list[dict]) -> dict:
    """Image tokens (first position and count per image) and the rotary position ids, prompt by prompt."""
    spans_same = ref_meta["vision"]["image_spans"] == tgt_meta["vision"]["image_spans"]
    positions = [_same_positions(r["positions"], t["positions"]) for r, t in zip(ref_prompts, tgt_prompts)]
    known = [p for p in positions if p is not None]
    return {"image_spans_same": spans_same, "positions_same": all(known) if known else None,
            "positions_compared": len(known), "same": spans_same and all(known)}


def _same_positions(ref, tgt) -> bool | None:
    if ref is None or tgt is None:
        return None
    return ref.shape == tgt.shape and bool(np.array_equal(ref, tgt))


def block_rows(ref_prompts: list[dict], tgt_prompts: list[dict], localise: dict) -> list[dict[str, Any]]:
    """One row per vision block and one for the merger, over every patch (token) of every prompt."""
    pairs = [(r["blocks"], t["blocks"]) for r, t in zip(ref_prompts, tgt_prompts)]
    count = pairs[0][0].shape[0]
    rows = [_row(f"block {i}", [(r[i], t[i]) for r, t in pairs], localise) for i in range(count)]
    rows.append(_row("merger", [(r["merger"], t["merger"]) for r, t in zip(ref_prompts, tgt_prompts)], localise))
    return rows


def _row(name: str, pairs: list[tuple[np.ndarray, np.ndarray]], localise: dict) -> dict[str, Any]:
    if any(r.shape != t.shape for r, t in pairs):  # other patch counts: the layout check fails the target
        return {"name": name, "cosine_min": None, "rel_l2_mean": None, "rel_l2_max": None, "max_abs_err": None,
                "finite": None, "patches": None, "over": True, "shapes_differ": True}
    ref = np.concatenate([r.astype(np.float64) for r, _ in pairs])
    tgt = np.concatenate([t.astype(np.float64) for _, t in pairs])
    finite = bool(np.isfinite(tgt).all() and np.isfinite(ref).all())
    ref_norm, tgt_norm = np.linalg.norm(ref, axis=-1), np.linalg.norm(tgt, axis=-1)
    cosine = np.einsum("th,th->t", ref, tgt) / np.maximum(ref_norm * tgt_norm, TINY)
    rel = np.linalg.norm(tgt - ref, axis=-1) / np.maximum(ref_norm, TINY)
    cosine_min, rel_mean = float(cosine.min()), float(rel.mean())
    return {"name": name, "cosine_min": cosine_min, "rel_l2_mean": rel_mean, "rel_l2_max": float(rel.max()),
            "max_abs_err": float(np.abs(tgt - ref).max()), "finite": finite, "patches": int(ref.shape[0]),
            "over": (not finite) or cosine_min < localise["cosine_min"] or rel_mean > localise["rel_l2_max"]}
