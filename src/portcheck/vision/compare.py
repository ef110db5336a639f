"""Rule compare_vision: a target's image prompts against the reference's. The text rows after the images are
compared as the seed prompts are (same metrics, thresholds and verdict); the image tokens' count and positions and
the multimodal rotary position ids must be identical (a mismatch fails); each vision block's output and the merger's
are compared per patch (cosine, relative L2, MaxAbsErr) with the per-layer thresholds, naming the first block over
them. Against the bf16 floor (FLOOR_TARGET's image prompts, as the corpus is): the text KLD's paired ratio by prompt
enters the verdict (compare.positions.floor_max), and each block's relative L2 as a multiple of the floor's names
the first block over layers.floor_multiple_max; the fixed thresholds are set for the real model, and a vision fault
at 9-29x the floor's KLD passed them (measured). A target whose engine takes no images is written not run, with
the reason; one whose stack could not run them (its dump says failed) fails, with the engine's error."""

from __future__ import annotations

from typing import Any

import numpy as np

from portcheck.compare.compare import compare_files, json_ready
from portcheck.compare.positions import vs_floor
from portcheck.vision.blocks_file import read_blocks

TINY = 1e-12


def not_run(reason: str) -> dict[str, Any]:
    return {"status": "not run", "reason": reason}


def compare_vision(ref_rows, tgt_rows, ref_blocks, tgt_blocks, thresholds: dict, tie_tolerance: float,
                   localise: dict, floor: tuple | None = None, positions: dict | None = None,
                   no_floor: str = "no floor: none given") -> dict[str, Any]:
    """localise: the config's layers (cosine_min, rel_l2_max, floor_multiple_max). floor: the floor target's
    (rows, blocks) files with `positions` (compare.positions); without them `no_floor` says why."""
    ref_meta, ref_prompts = read_blocks(ref_blocks)
    tgt_meta, tgt_prompts = read_blocks(tgt_blocks)
    for meta in (ref_meta, tgt_meta):
        if meta.get("status") == "not run":
            return not_run(meta["reason"])
    if tgt_meta.get("status") == "failed":
        return {"status": "fail", "reason": tgt_meta["reason"], "reasons": [tgt_meta["reason"]], "inconclusive": []}
    text = compare_files(ref_rows, tgt_rows, thresholds, tie_tolerance)
    layout = layout_check(ref_meta, tgt_meta, ref_prompts, tgt_prompts)
    blocks = block_rows(ref_prompts, tgt_prompts, localise)
    against = _against_floor(text, blocks, ref_rows, ref_prompts, floor, positions, thresholds, tie_tolerance,
                             localise, no_floor)
    return json_ready({
        **_verdict(text["verdict"], layout, against), "text": text, "layout": layout, "blocks": blocks,
        "first_divergent": next((row["name"] for row in blocks if row["over"]), None),
        "vs_floor": against, "thresholds": localise, "prompts": ref_meta["prompts"],
        "image_grid_thw": ref_meta["vision"]["image_grid_thw"],
        "tower": {side: {k: meta["vision"].get(k) for k in ("tower_class", "blocks", "patch_embedding",
                                                            "encode_seconds", "first_token_seconds", "run_seconds")}
                  for side, meta in (("reference", ref_meta), ("target", tgt_meta))}})


def _verdict(text: dict, layout: dict, against: dict) -> dict[str, Any]:
    """fail on the text's verdict, a layout difference or the floor ratio; inconclusive where one of them is and
    none fails."""
    reasons = list(text["reasons"])
    if not layout["same"]:
        reasons.append("image tokens or rotary positions differ from the reference's")
    inconclusive = list(text["inconclusive"])
    if against["status"] in ("fail", "inconclusive"):
        (reasons if against["status"] == "fail" else inconclusive).append(f"vs bf16 floor: {against['reason']}")
    status = "fail" if reasons else "inconclusive" if inconclusive else "pass"
    return {"status": status, "reasons": reasons, "inconclusive": inconclusive}


def _against_floor(text: dict, blocks: list[dict], ref_rows, ref_prompts: list[dict], floor: tuple | None,
                   positions: dict | None, thresholds: dict, tie_tolerance: float, localise: dict,
                   no_floor: str) -> dict[str, Any]:
    """The text KLD's ratio to the floor's (a verdict check) and each block's floor multiple (localisation); the
    blocks get floor_multiple and over_floor (None where unknown)."""
    for row in blocks:
        row.update(floor_multiple=None, over_floor=None)
    if floor is None:
        return {"status": "not run", "reason": no_floor, "first_over": None}
    floor_rows, floor_blocks = floor
    floor_meta, floor_prompts = read_blocks(floor_blocks)
    if floor_meta.get("status") == "not run":
        return {"status": "not run", "reason": f"no floor: {floor_meta['reason']}", "first_over": None}
    check = vs_floor(text, compare_files(ref_rows, floor_rows, thresholds, tie_tolerance), str(floor_rows),
                     positions)
    limit = localise["floor_multiple_max"]
    for row, base in zip(blocks, block_rows(ref_prompts, floor_prompts, localise)):
        row["floor_multiple"] = _multiple(row["rel_l2_mean"], base["rel_l2_mean"])
        row["over_floor"] = None if row["floor_multiple"] is None else row["floor_multiple"] > limit
    first = next((row["name"] for row in blocks if row["over_floor"]), None)
    return {**check, "multiple_max": limit, "first_over": first}


def _multiple(value: float | None, base: float | None) -> float | None:
    if value is None or base is None or not np.isfinite(value):
        return None
    return value / base if base > 0 else (1.0 if value == 0 else None)


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
