"""Long-context precision: a target's corpus windows against the reference's, by position bucket.

Qwen3.5's Gated DeltaNet layers prefill in 64-token chunks and carry a recurrent state from chunk to chunk; the
seed prompts never leave the first chunk. Two checks look past it:
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

from portcheck.compare import metrics as m
from portcheck.compare.compare import compare_prompt, json_ready, parse_thresholds, verdict
from portcheck.dump.logits_file import Dump, check_comparable, read_dump
from portcheck.errors import PortcheckError

# The seed-prompt thresholds that apply per bucket (the msprobe tensor checks are per prompt, not per position).
BUCKET_CHECKS = ("kld_mean_max", "kld_p99_max", "top1_agreement_min", "ppl_rel_delta_max")
Z95 = 1.96


def compare_corpus_files(ref_path, tgt_path, thresholds: dict, tie_tolerance: float, corpus: dict) -> dict[str, Any]:
    return compare_corpus(read_dump(ref_path), read_dump(tgt_path), thresholds, tie_tolerance, corpus)


def compare_corpus(ref: Dump, tgt: Dump, thresholds: dict, tie_tolerance: float, corpus: dict) -> dict[str, Any]:
    """corpus: the config's corpus section (score_from, bucket, growth_max, growth_floor)."""
    if ref.kind != "full":
        raise PortcheckError(f"the reference {ref.name} ({ref.path}) must be a full-logits dump, not {ref.kind}")
    check_comparable(ref, tgt)
    rows = [compare_prompt(ref, tgt, i, tie_tolerance) for i in range(ref.num_prompts)]
    positions = _scored_positions(rows, corpus["score_from"])
    checks = [c for c in parse_thresholds(thresholds) if c["name"] in BUCKET_CHECKS]
    topk = tgt.kind == "topk"
    buckets = [_bucket(positions, start, start + corpus["bucket"], checks, topk)
               for start in range(corpus["score_from"] // corpus["bucket"] * corpus["bucket"],
                                  max(len(r.kld) for r in rows), corpus["bucket"])]
    buckets = [b for b in buckets if b["n_positions"]]
    growth = growth_check(positions, buckets, corpus["growth_max"], corpus["growth_floor"])
    nonfinite = [entry for r in rows for entry in r.nonfinite]
    result = {
        "reference": {"name": ref.name, "kind": ref.kind, "path": str(ref.path)},
        "target": {"name": tgt.name, "kind": tgt.kind, "path": str(tgt.path)},
        "corpus": tgt.meta.get("corpus"),
        "windows": ref.num_prompts,
        "window_length": max(len(ids) for ids in ref.input_ids),
        "score_from": corpus["score_from"],
        "bucket": corpus["bucket"],
        "kld_is_lower_bound": topk,
        "overall": _statistics(positions, np.ones(len(positions["kld"]), bool)),
        "buckets": buckets,
        "growth": growth,
        "kld_by_position": _mean_by_position(positions),
        "nonfinite": nonfinite,
        "nonfinite_count": len(nonfinite),
    }
    result["verdict"] = corpus_verdict(buckets, growth, nonfinite)
    return json_ready(result)


def _scored_positions(rows, score_from: int) -> dict[str, np.ndarray]:
    """Flat arrays over every scored, finite position of every window: position, kld, agree, tie, and the
    reference / target log-prob of the actual next token (NaN at a window's last row, which has none)."""
    parts: dict[str, list] = {k: [] for k in ("position", "kld", "agree", "tie", "ref_next", "tgt_next")}
    for r in rows:
        n = len(r.kld)
        keep = r.finite & (np.arange(n) >= score_from)
        parts["position"].append(np.arange(n)[keep])
        parts["kld"].append(r.kld[keep])
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


def _bucket(positions: dict, start: int, end: int, checks: list, topk: bool) -> dict[str, Any]:
    mask = (positions["position"] >= start) & (positions["position"] < end)
    last = int(positions["position"][mask].max()) if mask.any() else end - 1
    summary = {"start": start, "end": last, **_statistics(positions, mask), "kld_is_lower_bound": topk}
    result = verdict({**summary, "nonfinite": []}, checks)
    summary.update(status=result["status"] if summary["n_positions"] else "not available",
                   reasons=result["reasons"], notes=result["notes"])
    return summary


def growth_check(positions: dict, buckets: list[dict], growth_max: float, floor: float) -> dict[str, Any]:
    """Mean KLD past the first scored bucket / mean KLD within it, with a delta-method 95% lower bound."""
    if len(buckets) < 2:
        return {"status": "not available", "reason": "fewer than two position buckets were scored"}
    first_end = buckets[0]["end"]
    first = positions["kld"][positions["position"] <= first_end]
    later = positions["kld"][positions["position"] > first_end]
    mean_first, mean_later = float(first.mean()), float(later.mean())
    # JSON has no infinity: an exact first bucket is said so, and its ratio is written as null.
    base = {"first_bucket": f"{buckets[0]['start']}-{first_end}", "kld_first": mean_first,
            "kld_later": mean_later, "first_bucket_exact": mean_first == 0, "growth_max": growth_max,
            "growth_floor": floor}
    if mean_later <= floor:
        return {**base, "ratio": _ratio(mean_later, mean_first), "ratio_lower95": None, "status": "pass",
                "reason": f"KLD past the first bucket ({mean_later:.3g}) is below the floor {floor:g}"}
    ratio = _ratio(mean_later, mean_first)
    lower = ratio if math.isinf(ratio) else ratio - Z95 * ratio * math.hypot(_rel_stderr(later), _rel_stderr(first))
    worst = max(buckets[1:], key=lambda b: b["kld_mean"] or 0.0)
    failed = lower > growth_max
    return {**base, "ratio": ratio, "ratio_lower95": lower, "status": "fail" if failed else "pass",
            "worst_bucket": f"{worst['start']}-{worst['end']}",
            "reason": (f"mean KLD past the first bucket ({mean_later:.3g}) is {_times(ratio)} the first bucket's "
                       f"({mean_first:.3g}; 95% lower bound {_times(lower)}, allowed {growth_max:g}x); highest in "
                       f"positions {worst['start']}-{worst['end']}: the state carried across chunks diverges")
                      if failed else f"ratio {_times(ratio)}, 95% lower bound {_times(lower)} ≤ {growth_max:g}x"}


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else math.inf


def _rel_stderr(values: np.ndarray) -> float:
    mean = values.mean()
    return float(values.std(ddof=1) / math.sqrt(values.size) / mean) if values.size > 1 and mean > 0 else 0.0


def _times(value: float) -> str:
    return "infinitely many times" if math.isinf(value) else f"{value:.3g}x"


def _mean_by_position(positions: dict) -> list[list[float]]:
    """[[position, mean KLD over windows], ...] for the KLD-against-position plot."""
    order = np.unique(positions["position"])
    return [[int(p), float(positions["kld"][positions["position"] == p].mean())] for p in order]


def corpus_verdict(buckets: list[dict], growth: dict, nonfinite: list) -> dict[str, Any]:
    reasons = [f"positions {b['start']}-{b['end']}: {reason}" for b in buckets for reason in b["reasons"]]
    if growth["status"] == "fail":
        reasons.append(f"growth: {growth['reason']}")
    if nonfinite:
        reasons.append(f"NaN/inf at {len(nonfinite)} positions (window, row): "
                       + ", ".join(f"({e['prompt']}, {e['row']})" for e in nonfinite[:10]))
    notes = sorted({note for b in buckets for note in b["notes"]})
    if growth["status"] == "not available":
        notes.append(f"growth: {growth['reason']}")
    return {"status": "fail" if reasons else "pass", "reasons": reasons, "notes": notes}
