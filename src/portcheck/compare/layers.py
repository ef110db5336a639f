"""Where a target diverges: its hidden state after every decoder layer (and the final norm) against the
reference's on the same tokens, with msprobe's tensor metrics per position (cosine, relative L2 error, MaxAbsErr),
summarised per layer; the first layer over the thresholds; and how much of the error growth each layer, and each
layer type (Gated DeltaNet vs full attention), adds."""

from __future__ import annotations

from typing import Any

import numpy as np

from portcheck.compare.compare import json_ready
from portcheck.dump.layers_file import read_layers
from portcheck.errors import PortcheckError

TYPE_LABELS = {"linear_attention": "Gated DeltaNet", "full_attention": "full attention"}


def compare_layers_files(ref_path, tgt_path, settings: dict, bucket: int = 64) -> dict[str, Any]:
    """settings: the config's `layers` (cosine_min, rel_l2_max)."""
    ref_meta, ref_states = read_layers(ref_path)
    tgt_meta, tgt_states = read_layers(tgt_path)
    base = {"reference": ref_meta.get("target"), "target": tgt_meta.get("target"), "thresholds": {
        "cosine_min": settings["cosine_min"], "rel_l2_max": settings["rel_l2_max"]}}
    for meta, path in ((ref_meta, ref_path), (tgt_meta, tgt_path)):
        if meta.get("not_captured"):
            return {**base, "status": "not run", "reason": f"{meta.get('target')}: {meta['not_captured']} ({path})"}
    if (ref_meta["sequences_sha"], ref_meta["model_sha"]) != (tgt_meta["sequences_sha"], tgt_meta["model_sha"]):
        raise PortcheckError(f"cannot compare the layers of {tgt_path} with {ref_path}: other model or tokens; "
                             "rerun both dumps with the same model and config")
    stats = _position_stats(ref_states, tgt_states, bucket)
    types = list(ref_meta.get("layer_types") or [])
    layers = _per_layer(stats, types, settings)
    first = next((row for row in layers if row["over"]), None)
    shares = _type_shares(layers)
    return json_ready({**base, "status": "diverges" if first else "within thresholds", "layers": layers,
                       "first_divergent": first and {"index": first["index"], "name": first["name"],
                                                     "type": first["type"]},
                       "error_growth_by_type": shares, "finding": _finding(first, shares, layers),
                       "sequences": len(ref_states), "positions": int(stats["cosine"].shape[1]), "bucket": bucket})


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


def _per_layer(stats: dict, types: list[str], settings: dict) -> list[dict[str, Any]]:
    rows, previous = [], 0.0
    count = stats["cosine"].shape[0]
    for index in range(count):
        is_norm = index == count - 1
        kind = "final norm" if is_norm else TYPE_LABELS.get(types[index] if index < len(types) else "", "unknown")
        rel = stats["rel_l2"][index]
        cosine_min, rel_mean = float(stats["cosine"][index].min()), float(rel.mean())
        rows.append({
            "index": index, "name": "final norm" if is_norm else f"layer {index}", "type": kind,
            "cosine_min": cosine_min, "cosine_mean": float(stats["cosine"][index].mean()),
            "rel_l2_mean": rel_mean, "rel_l2_max": float(rel.max()),
            "max_abs_err": float(stats["max_abs"][index].max()),
            "rel_l2_by_bucket": [float(rel[stats["bucket"] == b].mean()) for b in np.unique(stats["bucket"])],
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
