"""Where a target diverges: its hidden state after every decoder layer (and the final norm) against the
reference's on the same tokens, with msprobe's tensor metrics per position (cosine, relative L2 error, MaxAbsErr),
summarised per layer; the first layer over the thresholds; how much of the error growth each layer, and each
layer type (Gated DeltaNet vs full attention), adds; each layer's added error as a multiple of the bf16 floor's
(FLOOR_TARGET against the same reference) and the first layer over `floor_multiple_max`; and each Gated DeltaNet
layer's recurrent state after every sequence. A non-finite value in a layer's output or state is over the
thresholds, named."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from portcheck.compare.compare import json_ready
from portcheck.dump.layers_file import read_layers
from portcheck.errors import PortcheckError
from portcheck.targets import FLOOR_TARGET

TYPE_LABELS = {"linear_attention": "Gated DeltaNet", "full_attention": "full attention"}
TINY = np.finfo(float).tiny


def compare_layers_files(ref_path, tgt_path, settings: dict, bucket: int = 64, floor_path=None,
                         no_floor: str = "no floor: none given") -> dict[str, Any]:
    """settings: the config's `layers` (cosine_min, rel_l2_max, floor_multiple_max). floor_path: the floor
    target's layers file; without one, `no_floor` says why and the multiples are unknown."""
    ref_meta, ref_hidden, ref_states = read_layers(ref_path)
    tgt_meta, tgt_hidden, tgt_states = read_layers(tgt_path)
    base = {"reference": ref_meta.get("target"), "target": tgt_meta.get("target"), "thresholds": {
        key: settings.get(key) for key in ("cosine_min", "rel_l2_max", "floor_multiple_max")}}
    for meta, path in ((ref_meta, ref_path), (tgt_meta, tgt_path)):
        if not meta["sequences"]:
            return {**base, "status": meta.get("status") or "not run",
                    "reason": f"{meta.get('target')}: {meta['not_captured']} ({path})"}
    check_same_tokens(ref_meta, tgt_meta, ref_path, tgt_path)
    stats = _position_stats(ref_hidden, tgt_hidden, bucket)
    layers = _per_layer(stats, ref_meta, settings)
    floor = _against_floor(layers, ref_meta, ref_hidden, floor_path, no_floor, settings, bucket)
    first = next((row for row in layers if row["over"]), None)
    shares = _type_shares(layers)
    return json_ready({**base, "status": "diverges" if first else "within thresholds", "layers": layers,
                       "first_divergent": first and {"index": first["index"], "name": first["name"],
                                                     "type": first["type"]},
                       "floor": floor, "error_growth_by_type": shares,
                       "finding": _finding(first, shares, layers, floor),
                       "gdn_states": compare_gdn_states(ref_meta, ref_states, tgt_meta, tgt_states, settings),
                       "sequences": len(ref_hidden), "positions": int(stats["cosine"].shape[1]), "bucket": bucket})


def check_same_tokens(ref_meta: dict, other_meta: dict, ref_path, other_path) -> None:
    if (ref_meta["sequences_sha"], ref_meta["model_sha"], ref_meta.get("layer_indices")) != (
            other_meta["sequences_sha"], other_meta["model_sha"], other_meta.get("layer_indices")):
        raise PortcheckError(f"cannot compare the layers of {other_path} with {ref_path}: other model, tokens or "
                             "layers.indices; rerun both dumps with the same model and config")


def compare_gdn_states(ref_meta, ref_states, tgt_meta, tgt_states, settings: dict) -> dict[str, Any]:
    """Each Gated DeltaNet layer's recurrent state after every sequence against the reference's: relative L2
    error and cosine of the whole state (heads x key x value), worst over the sequences, with each side's state
    dtype. Informational: a state can differ more than the layer output it feeds (e.g. in unused directions);
    a non-finite state is over the thresholds all the same."""
    dtypes = {"reference": ref_meta["gdn"].get("state_dtype"), "target": tgt_meta["gdn"].get("state_dtype")}
    for meta in (ref_meta, tgt_meta):
        if not meta["gdn"].get("sequences"):
            return {"status": "not determined", "state_dtype": dtypes,
                    "reason": f"{meta.get('target')}: {meta['gdn'].get('not_captured') or 'no state captured'}"}
    if ref_meta["gdn"].get("sequence_indices") != tgt_meta["gdn"].get("sequence_indices"):
        return {"status": "not determined", "state_dtype": dtypes, "reason": "the two files keep the states of other "
                "sequences (layers.state_sequences differs); rerun both dumps with the same config"}
    rows = [_state_row(index, np.stack([s[slot] for s in ref_states]), np.stack([s[slot] for s in tgt_states]),
                       settings) for slot, index in enumerate(ref_meta["gdn"]["layers"])]
    first = next((row for row in rows if row["over"]), None)
    return {"status": "diverges" if first else "within thresholds", "state_dtype": dtypes, "layers": rows,
            "first_divergent": first and first["name"], "sequences": len(ref_states)}


def _state_row(index: int, ref: np.ndarray, tgt: np.ndarray, settings: dict) -> dict[str, Any]:
    """[sequences, heads, key, value] states of one GDN layer, both sides."""
    non_finite = {"reference": int((~np.isfinite(ref)).sum()), "target": int((~np.isfinite(tgt)).sum())}
    with np.errstate(invalid="ignore", over="ignore"):
        flat_ref = ref.reshape(len(ref), -1).astype(np.float64)
        flat_tgt = tgt.reshape(len(tgt), -1).astype(np.float64)
        ref_norm = np.maximum(np.linalg.norm(flat_ref, axis=1), TINY)
        rel = np.linalg.norm(flat_tgt - flat_ref, axis=1) / ref_norm
        cosine = np.einsum("sn,sn->s", flat_ref, flat_tgt) / np.maximum(
            ref_norm * np.linalg.norm(flat_tgt, axis=1), TINY)
        max_abs = float(np.abs(flat_tgt - flat_ref).max())
    found = non_finite if any(non_finite.values()) else None
    return {"index": index, "name": f"layer {index}", "rel_l2_max": float(rel.max()),
            "rel_l2_mean": float(rel.mean()), "cosine_min": float(cosine.min()), "max_abs_err": max_abs,
            "non_finite": found,
            "over": bool(found) or float(cosine.min()) < settings["cosine_min"]
            or float(rel.max()) > settings["rel_l2_max"]}


def _position_stats(ref_states, tgt_states, bucket: int) -> dict[str, np.ndarray]:
    """Per [layer, position] over every sequence's positions (float64): cosine, relative L2 and MaxAbsErr; the
    error each decoder layer adds itself ("added", one row fewer: no final norm), the relative L2 of the change
    of the error vector across the layer, i.e. of the difference of the two sides' residual updates (from the
    previous captured layer; layer 0's from zero); which side holds a non-finite value; and each position's
    sequence, offset in it and bucket."""
    columns = {key: [] for key in ("cosine", "rel_l2", "max_abs", "added", "non_finite_reference",
                                   "non_finite_target", "sequence", "position")}
    for sequence, (ref, tgt) in enumerate(zip(ref_states, tgt_states)):
        if ref.shape != tgt.shape:
            raise PortcheckError(f"per-layer states differ in shape: reference {ref.shape}, target {tgt.shape}")
        with np.errstate(invalid="ignore", over="ignore"):
            for key, value in _sequence_stats(ref.astype(np.float64), tgt.astype(np.float64)).items():
                columns[key].append(value)
        columns["sequence"].append(np.full(ref.shape[1], sequence))
        columns["position"].append(np.arange(ref.shape[1]))
    stats = {key: np.concatenate(values, axis=-1) for key, values in columns.items()}
    return {**stats, "bucket": stats["position"] // bucket}


def _sequence_stats(ref: np.ndarray, tgt: np.ndarray) -> dict[str, np.ndarray]:
    diff = tgt - ref
    ref_norm, tgt_norm = np.linalg.norm(ref, axis=-1), np.linalg.norm(tgt, axis=-1)
    decoder = diff[:-1]  # the final norm is no residual update: no added error of its own
    added = np.diff(decoder, axis=0, prepend=np.zeros_like(decoder[:1]))
    return {"cosine": np.einsum("lth,lth->lt", ref, tgt) / np.maximum(ref_norm * tgt_norm, TINY),
            "rel_l2": np.linalg.norm(diff, axis=-1) / np.maximum(ref_norm, TINY),
            "max_abs": np.abs(diff).max(axis=-1),
            "added": np.linalg.norm(added, axis=-1) / np.maximum(ref_norm[:-1], TINY),
            "non_finite_reference": ~np.isfinite(ref).all(axis=-1), "non_finite_target": ~np.isfinite(tgt).all(axis=-1)}


def _per_layer(stats: dict, meta: dict, settings: dict) -> list[dict[str, Any]]:
    rows, previous = [], 0.0
    count = stats["cosine"].shape[0]
    types = list(meta.get("layer_types") or [])
    indices = meta.get("layer_indices") or list(range(count - 1))
    for slot in range(count):
        is_norm = slot == count - 1
        index = None if is_norm else indices[slot]
        kind = "final norm" if is_norm else TYPE_LABELS.get(types[index] if index < len(types) else "", "unknown")
        rel = stats["rel_l2"][slot]
        cosine_min, rel_mean = float(stats["cosine"][slot].min()), float(rel.mean())
        non_finite = _non_finite(stats, slot)
        rows.append({
            "index": index, "name": "final norm" if is_norm else f"layer {index}", "type": kind,
            "cosine_min": cosine_min, "cosine_mean": float(stats["cosine"][slot].mean()),
            "rel_l2_mean": rel_mean, "rel_l2_max": float(rel.max()),
            "max_abs_err": float(stats["max_abs"][slot].max()),
            "rel_l2_by_bucket": [float(rel[stats["bucket"] == b].mean()) for b in np.unique(stats["bucket"])],
            # from the previous captured layer's output: one layer's share unless layers.indices skips some
            "added_rel_l2": None if is_norm else rel_mean - previous,
            "added_error": None if is_norm else float(stats["added"][slot].mean()),
            "non_finite": non_finite,
            "over": bool(non_finite) or cosine_min < settings["cosine_min"] or rel_mean > settings["rel_l2_max"],
        })
        previous = rel_mean
    return rows


def _non_finite(stats: dict, slot: int) -> dict[str, Any] | None:
    """Positions whose output holds a non-finite value, per side, and the first of them; None: all finite."""
    sides = {side: stats[f"non_finite_{side}"][slot] for side in ("reference", "target")}
    either = sides["reference"] | sides["target"]
    if not either.any():
        return None
    first = int(np.argmax(either))
    return {**{side: int(found.sum()) for side, found in sides.items()},
            "first": {"sequence": int(stats["sequence"][first]), "position": int(stats["position"][first])}}


# ---------------------------------------------------------------- against the bf16 floor


def _against_floor(layers: list[dict], ref_meta: dict, ref_hidden, floor_path, no_floor: str, settings: dict,
                   bucket: int) -> dict[str, Any]:
    """Each decoder layer's added error as a multiple of the floor's at the same layer (rows get floor_multiple
    and over_floor: None where unknown); the first layer over floor_multiple_max. No floor: every multiple is
    unknown, which is never a pass."""
    limit = settings.get("floor_multiple_max")
    floor_rows, reason = _floor_layers(ref_meta, ref_hidden, floor_path, no_floor, settings, bucket)
    for slot, row in enumerate(layers):
        floor_added = floor_rows[slot]["added_error"] if floor_rows else None
        row["floor_multiple"] = _multiple(row["added_error"], floor_added)
        row["over_floor"] = _over_floor(row, floor_added, limit)
    decoder = [row for row in layers if row["index"] is not None]
    first = next((row for row in decoder if row["over_floor"]), None)
    finite = [row for row in decoder if row["floor_multiple"] is not None and math.isfinite(row["floor_multiple"])]
    largest = max(finite, key=lambda row: row["floor_multiple"], default=None)
    unknown = any(row["over_floor"] is None for row in decoder)
    floor = {"target": floor_rows[0]["target"] if floor_rows else FLOOR_TARGET, "multiple_max": limit,
             "status": "over" if first else "unknown" if unknown else "within", "reason": reason,
             "first_over": first and {key: first[key] for key in ("index", "name", "type", "floor_multiple")},
             "largest": largest and {key: largest[key] for key in ("index", "name", "type", "floor_multiple")},
             "rel_l2_mean": [row["rel_l2_mean"] for row in floor_rows or []],
             "added_error": [row["added_error"] for row in floor_rows or []]}
    return {**floor, "finding": floor_finding(floor)}


def _floor_layers(ref_meta, ref_hidden, floor_path, no_floor: str, settings: dict, bucket: int):
    """(the floor's per-layer rows against the reference, each with its "target"; None and why not)."""
    if floor_path is None:
        return None, no_floor
    limit = settings.get("floor_multiple_max")
    if not (isinstance(limit, (int, float)) and limit > 1):  # NaN too: no multiple would ever be over it
        raise PortcheckError(f"layers.floor_multiple_max must be a number > 1, got {limit!r}")
    floor_meta, floor_hidden, _states = read_layers(floor_path)
    if not floor_meta["sequences"]:
        return None, f"no floor: {floor_meta.get('target')}: {floor_meta['not_captured']} ({floor_path})"
    check_same_tokens(ref_meta, floor_meta, "the reference's", floor_path)
    rows = _per_layer(_position_stats(ref_hidden, floor_hidden, bucket), ref_meta, settings)
    return [{**row, "target": floor_meta.get("target")} for row in rows], None


def _multiple(added: float | None, floor_added: float | None) -> float | None:
    """added / floor_added; a layer adding nothing is 0x whatever the floor; over a floor of exactly 0: inf."""
    if added is None or floor_added is None or not (math.isfinite(added) and math.isfinite(floor_added)):
        return None
    if added == 0:
        return 0.0
    return added / floor_added if floor_added > 0 else math.inf


def _over_floor(row: dict, floor_added: float | None, limit: float | None) -> bool | None:
    """A non-finite output is over whatever the floor's value; else over `limit`; None where unknown (no floor,
    a non-finite floor, the final norm)."""
    if row["index"] is None or floor_added is None:
        return None
    if row["non_finite"] and row["non_finite"]["target"]:
        return True
    multiple = row["floor_multiple"]
    return None if multiple is None else multiple > limit


# ---------------------------------------------------------------- summary


def _type_shares(layers: list[dict]) -> dict[str, float | None]:
    """Each layer type's share of the growth of the relative error through the decoder layers (increases only;
    a non-finite layer has no share)."""
    added = {}
    for row in layers:
        if row["added_rel_l2"] is not None and math.isfinite(row["added_rel_l2"]):
            added[row["type"]] = added.get(row["type"], 0.0) + max(row["added_rel_l2"], 0.0)
    total = sum(added.values())
    return {kind: (value / total if total > 0 else None) for kind, value in added.items()}


def _finding(first: dict | None, shares: dict, layers: list[dict], floor: dict) -> str:
    parts = [f"{kind} layers add {share:.0%} of the error growth" for kind, share in
             sorted(shares.items(), key=lambda kv: -(kv[1] or 0)) if share is not None]
    where = (f"first over the thresholds: {first['name']} ({first['type']}){non_finite_note(first)}" if first
             else "no layer is over the thresholds")
    steps = [row for row in layers if row["added_rel_l2"] is not None and math.isfinite(row["added_rel_l2"])]
    largest = max(steps, key=lambda r: r["added_rel_l2"], default=None)
    if largest and largest["added_rel_l2"] > 0:
        parts.append(f"the largest step is {largest['name']} ({largest['type']})")
    return "; ".join([where, floor["finding"], *parts])


def non_finite_note(row: dict) -> str:
    found = row.get("non_finite")
    if not found:
        return ""
    sides = " and ".join(f"{side} {count:,}" for side, count in found.items() if side != "first" and count)
    where = found["first"]
    return (f": non-finite values at positions ({sides}), first at sequence {where['sequence']}, "
            f"position {where['position']}")


def floor_finding(floor: dict) -> str:
    """One clause: the first layer over the floor multiple, or why none is, or why it is unknown."""
    limit = floor["multiple_max"]
    first, largest = floor["first_over"], floor["largest"]
    if first:
        multiple = "non-finite" if first["floor_multiple"] is None else f"{first['floor_multiple']:.1f}x"
        return (f"first over {limit:g}x the bf16 floor's added error ({floor['target']}): {first['name']} "
                f"({first['type']}, {multiple})")
    if floor["status"] == "unknown":
        return f"against the bf16 floor: unknown ({floor['reason'] or 'a non-finite floor'})"
    peak = f", largest {largest['floor_multiple']:.2f}x at {largest['name']}" if largest else ""
    return f"no layer over {limit:g}x the bf16 floor's added error ({floor['target']}{peak})"
