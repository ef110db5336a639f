"""Where a target diverges: its hidden state after every decoder layer (and the final norm) against the
reference's on the same tokens, with msprobe's tensor metrics per position (cosine, relative L2 error, MaxAbsErr),
summarised per layer; the first layer over the thresholds; how much of the error growth each layer, and each
layer type (Gated DeltaNet vs full attention), adds; and each Gated DeltaNet layer's recurrent state after every
sequence."""

from __future__ import annotations

from typing import Any

import numpy as np

from portcheck.compare.compare import json_ready
from portcheck.dump.layers_file import read_layers
from portcheck.errors import PortcheckError

TYPE_LABELS = {"linear_attention": "Gated DeltaNet", "full_attention": "full attention"}


def compare_layers_files(ref_path, tgt_path, settings: dict, bucket: int = 64) -> dict[str, Any]:
    """settings: the config's `layers` (cosine_min, rel_l2_max)."""
    ref_meta, ref_hidden, ref_states = read_layers(ref_path)
    tgt_meta, tgt_hidden, tgt_states = read_layers(tgt_path)
    base = {"reference": ref_meta.get("target"), "target": tgt_meta.get("target"), "thresholds": {
        "cosine_min": settings["cosine_min"], "rel_l2_max": settings["rel_l2_max"]}}
    for meta, path in ((ref_meta, ref_path), (tgt_meta, tgt_path)):
        if not meta["sequences"]:
            return {**base, "status": meta.get("status") or "not run",
                    "reason": f"{meta.get('target')}: {meta['not_captured']} ({path})"}
    if (ref_meta["sequences_sha"], ref_meta["model_sha"], ref_meta.get("layer_indices")) != (
            tgt_meta["sequences_sha"], tgt_meta["model_sha"], tgt_meta.get("layer_indices")):
        raise PortcheckError(f"cannot compare the layers of {tgt_path} with {ref_path}: other model, tokens or "
                             "layers.indices; rerun both dumps with the same model and config")
    stats = _position_stats(ref_hidden, tgt_hidden, bucket)
    indices = ref_meta.get("layer_indices") or list(range(stats["cosine"].shape[0] - 1))
    layers = _per_layer(stats, indices, list(ref_meta.get("layer_types") or []), settings)
    first = next((row for row in layers if row["over"]), None)
    shares = _type_shares(layers)
    return json_ready({**base, "status": "diverges" if first else "within thresholds", "layers": layers,
                       "first_divergent": first and {"index": first["index"], "name": first["name"],
                                                     "type": first["type"]},
                       "error_growth_by_type": shares, "finding": _finding(first, shares, layers),
                       "gdn_states": compare_gdn_states(ref_meta, ref_states, tgt_meta, tgt_states, settings),
                       "sequences": len(ref_hidden), "positions": int(stats["cosine"].shape[1]), "bucket": bucket})


def compare_gdn_states(ref_meta, ref_states, tgt_meta, tgt_states, settings: dict) -> dict[str, Any]:
    """Each Gated DeltaNet layer's recurrent state after every sequence against the reference's: relative L2
    error and cosine of the whole state (heads x key x value), worst over the sequences, with each side's state
    dtype. Informational: a state can differ more than the layer output it feeds (e.g. in unused directions)."""
    dtypes = {"reference": ref_meta["gdn"].get("state_dtype"), "target": tgt_meta["gdn"].get("state_dtype")}
    for meta in (ref_meta, tgt_meta):
        if not meta["gdn"].get("sequences"):
            return {"status": "not determined", "state_dtype": dtypes,
                    "reason": f"{meta.get('target')}: {meta['gdn'].get('not_captured') or 'no state captured'}"}
    if ref_meta["gdn"].get("sequence_indices") != tgt_meta["gdn"].get("sequence_indices"):
        return {"status": "not determined", "state_dtype": dtypes, "reason": "the two files keep the states of other "
                "sequences (layers.state_sequences differs); rerun both dumps with the same config"}
    rows = []
    for slot, index in enumerate(ref_meta["gdn"]["layers"]):
        ref = np.stack([s[slot] for s in ref_states]).astype(np.float64)
        tgt = np.stack([s[slot] for s in tgt_states]).astype(np.float64)
        flat_ref, flat_tgt = ref.reshape(len(ref), -1), tgt.reshape(len(tgt), -1)
        ref_norm = np.maximum(np.linalg.norm(flat_ref, axis=1), np.finfo(float).tiny)
        rel = np.linalg.norm(flat_tgt - flat_ref, axis=1) / ref_norm
        cosine = np.einsum("sn,sn->s", flat_ref, flat_tgt) / np.maximum(
            ref_norm * np.linalg.norm(flat_tgt, axis=1), np.finfo(float).tiny)
        rows.append({"index": index, "name": f"layer {index}", "rel_l2_max": float(rel.max()),
                     "rel_l2_mean": float(rel.mean()), "cosine_min": float(cosine.min()),
                     "max_abs_err": float(np.abs(tgt - ref).max()),
                     "over": float(cosine.min()) < settings["cosine_min"] or float(rel.max()) > settings["rel_l2_max"]})
    first = next((row for row in rows if row["over"]), None)
    return {"status": "diverges" if first else "within thresholds", "state_dtype": dtypes, "layers": rows,
            "first_divergent": first and first["name"], "sequences": len(ref_states)}


def _position_stats(ref_states, tgt_states, bucket: int) -> dict[str, np.ndarray]:
    """[layers, positions] cosine, relative L2 and MaxAbsErr over every sequence's positions (float64), and the
    bucket index of each position within its sequence."""
    cosine, rel_l2, max_abs, buckets = [], [], [], []
    for ref, tgt in zip(ref_states, tgt_states):
        if ref.shape != tgt.shape:
            raise PortcheckError(f"per-layer states differ in shape: reference {ref.shape}, target {tgt.shape}")
        ref, tgt = ref.astype(np.float64), tgt.astype(np.float64)
        diff = tgt - ref
        ref_norm, tgt_norm = np.linalg.norm(ref, axis=-1), np.linalg.norm(tgt, axis=-1)
        cosine.append(np.einsum("lth,lth->lt", ref, tgt) / np.maximum(ref_norm * tgt_norm, np.finfo(float).tiny))
        rel_l2.append(np.linalg.norm(diff, axis=-1) / np.maximum(ref_norm, np.finfo(float).tiny))
        max_abs.append(np.abs(diff).max(axis=-1))
        buckets.append(np.arange(ref.shape[1]) // bucket)
    return {"cosine": np.concatenate(cosine, axis=1), "rel_l2": np.concatenate(rel_l2, axis=1),
            "max_abs": np.concatenate(max_abs, axis=1), "bucket": np.concatenate(buckets)}


def _per_layer(stats: dict, indices: list[int], types: list[str], settings: dict) -> list[dict[str, Any]]:
    rows, previous = [], 0.0
    count = stats["cosine"].shape[0]
    for slot in range(count):
        is_norm = slot == count - 1
        index = None if is_norm else indices[slot]
        kind = "final norm" if is_norm else TYPE_LABELS.get(types[index] if index < len(types) else "", "unknown")
        rel = stats["rel_l2"][slot]
        cosine_min, rel_mean = float(stats["cosine"][slot].min()), float(rel.mean())
        rows.append({
            "index": index, "name": "final norm" if is_norm else f"layer {index}", "type": kind,
            "cosine_min": cosine_min, "cosine_mean": float(stats["cosine"][slot].mean()),
            "rel_l2_mean": rel_mean, "rel_l2_max": float(rel.max()),
            "max_abs_err": float(stats["max_abs"][slot].max()),
            "rel_l2_by_bucket": [float(rel[stats["bucket"] == b].mean()) for b in np.unique(stats["bucket"])],
            # from the previous captured layer's output: one layer's share unless layers.indices skips some
            "added_rel_l2": None if is_norm else rel_mean - previous,
            "over": cosine_min < settings["cosine_min"] or rel_mean > settings["rel_l2_max"],
        })
        previous = rel_mean
    return rows


def _type_shares(layers: list[dict]) -> dict[str, float | None]:
    """Each layer type's share of the growth of the relative error through the decoder layers (increases only)."""
    added = {}
    for row in layers:
        if row["added_rel_l2"] is not None:
            added[row["type"]] = added.get(row["type"], 0.0) + max(row["added_rel_l2"], 0.0)
    total = sum(added.values())
    return {kind: (value / total if total > 0 else None) for kind, value in added.items()}


def _finding(first: dict | None, shares: dict, layers: list[dict]) -> str:
    parts = [f"{kind} layers add {share:.0%} of the error growth" for kind, share in
             sorted(shares.items(), key=lambda kv: -(kv[1] or 0)) if share is not None]
    where = (f"first over the thresholds: {first['name']} ({first['type']})" if first
             else "no layer is over the thresholds")
    largest = max((row for row in layers if row["added_rel_l2"] is not None), key=lambda r: r["added_rel_l2"],
                  default=None)
    if largest and largest["added_rel_l2"] > 0:
        parts.append(f"the largest step is {largest['name']} ({largest['type']})")
    return "; ".join([where, *parts])
