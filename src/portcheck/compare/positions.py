"""Comparisons by position: long-context corpus windows (prefill) and decode steps, against the reference, by
bucket of positions.

Qwen3.5's Gated DeltaNet layers prefill in 64-token chunks and carry a recurrent state from chunk to chunk, and
decode with another kernel (a recurrent update, step by step); the seed-prompt comparison never leaves the first
chunk and never looks at decode. Two checks look there:
- every bucket (default 64 positions, one chunk) is held to the same thresholds as the seed prompts
  (kld_mean_max, kld_p99_max, top1_agreement_min, ppl_rel_delta_max); a failure names the bucket;
- growth: the mean KLD past the first scored bucket as a multiple of the first bucket's. A wrong chunk-boundary
  state leaves the first chunk exact and spoils everything after it, which the absolute thresholds can miss on a
  model whose state matters little (the embedded tiny model: dropping the state entirely costs KLD ~1e-4).
  It fails when the lower 95% bound of the ratio exceeds growth_max and the KLD past the first bucket is above
  growth_floor (below it, fp32 rounding noise would make any ratio meaningless).
Positions are treated as independent for the standard errors (neighbouring positions correlate: the bounds are
optimistic), which is why the growth check uses a ratio well above 1.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from portcheck.artifacts import read_artifact
from portcheck.compare import metrics as m
from portcheck.compare.compact import estimator_error
from portcheck.compare.compare import check_reference, compare_prompt, json_ready, kld_basis, parse_thresholds, verdict
from portcheck.dump.logits_file import Dump, check_comparable, read_dump

# The seed-prompt thresholds that apply per bucket (the msprobe tensor checks are per prompt, not per position).
BUCKET_CHECKS = ("kld_mean_max", "kld_p99_max", "top1_agreement_min", "ppl_rel_delta_max")
Z95 = 1.96


def compare_corpus_files(ref_path, tgt_path, thresholds: dict, tie_tolerance: float, positions: dict,
                         score_from: int = 0, storage: dict | None = None) -> dict[str, Any]:
    """The corpus windows (prefill): rows are positions in a window. storage: the config's compact_topk and
    compact_sample; where both dumps hold whole rows, the compact records' KLD error is measured on them."""
    ref, tgt = read_dump(ref_path), read_dump(tgt_path)
    result = compare_by_position(ref, tgt, thresholds, tie_tolerance, positions, score_from)
    storage = storage or {}
    error = estimator_error(ref, tgt, int(storage.get("compact_topk", 256)), int(storage.get("compact_sample", 128)))
    return json_ready({**result, "corpus": tgt.meta.get("corpus"), "storage": {
        "reference": ref.kind, "target": tgt.kind, "reference_bytes": ref.path.stat().st_size,
        "target_bytes": tgt.path.stat().st_size, "compact_error": error}})


def compare_decode_files(ref_path, tgt_path, thresholds: dict, tie_tolerance: float, positions: dict,
                         prefill_path) -> dict[str, Any]:
    """The decode steps: the target's decode dump against the reference's teacher-forced scores of the same
    tokens (rule score_decode); rows are decode steps. prefill_path: the same target's prefill comparison
    (compare/<target>.corpus.json, or the seed prompts' compare/<target>.json) for the decode-vs-prefill check."""
    ref, tgt = read_dump(ref_path), read_dump(tgt_path)
    result = compare_by_position(ref, tgt, thresholds, tie_tolerance, positions)
    decode = tgt.meta.get("decode") or {}
    result["decode"] = {"sequences": tgt.num_prompts, "steps": decode.get("max_tokens"),
                        "prompt_tokens": [len(p) for p in decode.get("prompts") or []]}
    prefill_kind = "corpus_compare" if str(prefill_path).endswith(".corpus.json") else "compare"
    result["decode_vs_prefill"] = decode_vs_prefill(result["overall"], read_artifact(prefill_path, prefill_kind),
                                                    str(prefill_path), positions)
    result["verdict"] = position_verdict(result["buckets"], result["growth"], result["nonfinite"],
                                         result["decode_vs_prefill"])
    return json_ready(result)


def decode_vs_prefill(decode: dict, prefill: dict, prefill_path: str, positions: dict) -> dict[str, Any]:
    """The decode path's mean KLD against the same target's prefill KLD: a healthy port decodes about as
    precisely as it prefills (same weights, same dtype); a decode-only fault (a recurrent state lost or mangled
    between steps) leaves prefill at its noise floor and raises decode above it, which absolute thresholds miss
    on a model whose state matters little (the embedded tiny model: a lost decode state costs KLD ~5e-4)."""
    summary = prefill.get("overall") or prefill  # corpus comparison, or the seed prompts' comparison
    base = (summary.get("kld_mean"), summary.get("kld_mean_stderr") or 0.0)
    grown = (decode.get("kld_mean"), decode.get("kld_mean_stderr") or 0.0)
    if base[0] is None or grown[0] is None:
        return {"status": "not available", "reason": f"no KLD mean in {prefill_path} or in the decode steps",
                "prefill": prefill_path}
    check = ratio_check(grown, base, positions["growth_max"], positions["growth_floor"], "over the decode steps",
                        "the prefill's")
    return {"prefill": prefill_path, "kld_prefill": base[0], "kld_decode": grown[0], **check}


def compare_by_position(ref: Dump, tgt: Dump, thresholds: dict, tie_tolerance: float, positions: dict,
                        score_from: int = 0) -> dict[str, Any]:
    """positions: the config's compare.positions (bucket, growth_max, growth_floor); rows before score_from in
    each sequence are left out."""
    check_reference(ref)
    check_comparable(ref, tgt)
    rows = [compare_prompt(ref, tgt, i, tie_tolerance) for i in range(ref.num_prompts)]
    scored = _scored_positions(rows, score_from)
    checks = [c for c in parse_thresholds(thresholds) if c["name"] in BUCKET_CHECKS]
    basis = kld_basis(ref, tgt)
    width = positions["bucket"]
    buckets = [_bucket(scored, start, start + width, checks, basis)
               for start in range(score_from // width * width, max(len(r.kld) for r in rows), width)]
    buckets = [b for b in buckets if b["n_positions"]]
    growth = growth_check(scored, buckets, positions["growth_max"], positions["growth_floor"])
    nonfinite = [entry for r in rows for entry in r.nonfinite]
    result = {
        "reference": {"name": ref.name, "kind": ref.kind, "path": str(ref.path)},
        "target": {"name": tgt.name, "kind": tgt.kind, "path": str(tgt.path)},
        "windows": ref.num_prompts,
        "window_length": max(len(ids) for ids in ref.input_ids),
        "score_from": score_from,
        "bucket": width,
        "kld_basis": basis,
        "kld_is_lower_bound": basis == "lower bound",
        "overall": _statistics(scored, np.ones(len(scored["kld"]), bool)),
        "buckets": buckets,
        "growth": growth,
        "kld_by_position": _mean_by_position(scored),
        "nonfinite": nonfinite,
        "nonfinite_count": len(nonfinite),
    }
    result["verdict"] = position_verdict(buckets, growth, nonfinite)
    return json_ready(result)


def _scored_positions(rows, score_from: int) -> dict[str, np.ndarray]:
    """Flat arrays over every scored, finite position of every window: position, kld, agree, tie, and the
    reference / target log-prob of the actual next token (NaN at a window's last row, which has none)."""
    parts: dict[str, list] = {k: [] for k in ("position", "kld", "kld_bound", "agree", "tie", "ref_next",
                                              "tgt_next")}
    for r in rows:
        n = len(r.kld)
        keep = r.finite & (np.arange(n) >= score_from)
        parts["position"].append(np.arange(n)[keep])
        parts["kld"].append(r.kld[keep])
        parts["kld_bound"].append(r.kld_bound[keep])
        parts["agree"].append(r.agree[keep])
        parts["tie"].append(r.tie[keep])
        for side, values in (("ref_next", r.ref_next), ("tgt_next", r.tgt_next)):
            parts[side].append(np.append(values, np.nan)[keep])
    return {k: np.concatenate(v) for k, v in parts.items()}


def _statistics(positions: dict, mask: np.ndarray) -> dict[str, Any]:
    kld = positions["kld"][mask]
    agree, tie = positions["agree"][mask], positions["tie"][mask]
    ref_next, tgt_next = positions["ref_next"][mask], positions["tgt_next"][mask]
    has_next = np.isfinite(ref_next) & np.isfinite(tgt_next)
    ppl_ref, ppl_tgt = m.perplexity(ref_next[has_next]), m.perplexity(tgt_next[has_next])
    summary = {f"kld_{k}": v for k, v in m.kld_summary(kld).items()}
    summary["kld_mean_lower_bound"] = float(positions["kld_bound"][mask].mean()) if kld.size else None
    summary.update(
        n_positions=int(kld.size),
        top1_agreement=float(agree.mean()) if kld.size else None,
        top1_ties=int(tie.sum()),
        top1_agreement_with_ties=float((agree.sum() + tie.sum()) / kld.size) if kld.size else None,
        rms_delta_p=m.rms(m.delta_p(ref_next[has_next], tgt_next[has_next])),
        ppl_ref=ppl_ref,
        ppl_target=ppl_tgt,
        ppl_rel_delta=None if not ppl_ref or ppl_tgt is None else abs(ppl_tgt / ppl_ref - 1.0),
    )
    return summary


def _bucket(positions: dict, start: int, end: int, checks: list, basis: str) -> dict[str, Any]:
    mask = (positions["position"] >= start) & (positions["position"] < end)
    last = int(positions["position"][mask].max()) if mask.any() else end - 1
    summary = {"start": start, "end": last, **_statistics(positions, mask), "kld_basis": basis,
               "kld_is_lower_bound": basis == "lower bound"}
    result = verdict({**summary, "nonfinite": []}, checks)
    summary.update(status=result["status"] if summary["n_positions"] else "not available",
                   reasons=result["reasons"], notes=result["notes"])
    return summary


def growth_check(positions: dict, buckets: list[dict], growth_max: float, floor: float) -> dict[str, Any]:
    """Mean KLD past the first scored bucket / mean KLD within it, with a delta-method 95% lower bound."""
    if len(buckets) < 2:
        return {"status": "not available", "reason": "fewer than two position buckets were scored"}
    first_end = buckets[0]["end"]
    first = _mean_and_stderr(positions["kld"][positions["position"] <= first_end])
    later = _mean_and_stderr(positions["kld"][positions["position"] > first_end])
    worst = max(buckets[1:], key=lambda b: b["kld_mean"] or 0.0)
    check = ratio_check(later, first, growth_max, floor, "past the first bucket", "the first bucket's")
    if check["status"] == "fail":
        check["reason"] += (f"; highest in positions {worst['start']}-{worst['end']}: the divergence grows with "
                            "position")
    # kld_first / kld_later / first_bucket_exact: the names the report and the JSON readers use.
    return {"first_bucket": f"{buckets[0]['start']}-{first_end}", "kld_first": first[0], "kld_later": later[0],
            "first_bucket_exact": first[0] == 0, "worst_bucket": f"{worst['start']}-{worst['end']}", **check}


def ratio_check(grown: tuple[float, float], base: tuple[float, float], growth_max: float, floor: float,
                grown_label: str, base_label: str) -> dict[str, Any]:
    """grown / base mean KLD ((mean, stderr) each) against growth_max: fails when the lower 95% bound of the ratio
    exceeds it and the grown KLD is above `floor`. JSON has no infinity: a zero base gives ratio null."""
    (mean, stderr), (base_mean, base_stderr) = grown, base
    common = {"growth_max": growth_max, "growth_floor": floor, "base_exact": base_mean == 0}
    ratio = mean / base_mean if base_mean > 0 else math.inf
    if mean <= floor:
        return {**common, "ratio": ratio, "ratio_lower95": None, "status": "pass",
                "reason": f"KLD {grown_label} ({mean:.3g}) is below the floor {floor:g}"}
    if math.isinf(ratio):
        lower = ratio
    else:
        lower = ratio - Z95 * ratio * math.hypot(stderr / mean, base_stderr / base_mean)
    failed = lower > growth_max
    text = (f"mean KLD {grown_label} ({mean:.3g}) is {_times(ratio)} {base_label} ({base_mean:.3g}; 95% lower "
            f"bound {_times(lower)}, allowed {growth_max:g}x)") if failed else (
        f"ratio {_times(ratio)}, 95% lower bound {_times(lower)} ≤ {growth_max:g}x")
    return {**common, "ratio": ratio, "ratio_lower95": lower, "status": "fail" if failed else "pass", "reason": text}


def _mean_and_stderr(values: np.ndarray) -> tuple[float, float]:
    stderr = float(values.std(ddof=1) / math.sqrt(values.size)) if values.size > 1 else 0.0
    return float(values.mean()), stderr


def _times(value: float) -> str:
    return "infinitely many times" if math.isinf(value) else f"{value:.3g}x"


def _mean_by_position(positions: dict) -> list[list[float]]:
    """[[position, mean KLD over windows], ...] for the KLD-against-position plot."""
    order = np.unique(positions["position"])
    return [[int(p), float(positions["kld"][positions["position"] == p].mean())] for p in order]


def position_verdict(buckets: list[dict], growth: dict, nonfinite: list, paths: dict | None = None) -> dict[str, Any]:
    reasons = [f"positions {b['start']}-{b['end']}: {reason}" for b in buckets for reason in b["reasons"]]
    if growth["status"] == "fail":
        reasons.append(f"growth: {growth['reason']}")
    if paths and paths["status"] == "fail":
        reasons.append(f"decode vs prefill: {paths['reason']}")
    if nonfinite:
        reasons.append(f"NaN/inf at {len(nonfinite)} positions (window, row): "
                       + ", ".join(f"({e['prompt']}, {e['row']})" for e in nonfinite[:10]))
    notes = sorted({note for b in buckets for note in b["notes"]})
    if growth["status"] == "not available":
        notes.append(f"growth: {growth['reason']}")
    return {"status": "fail" if reasons else "pass", "reasons": reasons, "notes": notes}
