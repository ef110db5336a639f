"""Comparisons by position: long-context corpus windows (prefill) and decode steps, against the reference, by
bucket of positions.

Qwen3.5's Gated DeltaNet layers prefill in 64-token chunks and carry a recurrent state from chunk to chunk, and
decode with another kernel (a recurrent update, step by step); the seed-prompt comparison never leaves the first
chunk and never looks at decode. Two checks look there, and the verdict rests on them:
- the pooled comparison: every scored position together, held to the seed prompts' thresholds (kld_mean_max,
  kld_p99_max, top1_agreement_min, ppl_rel_delta_max);
- growth: the KLD past the first bucket as a multiple of the KLD within it (compare/statistics.py: windows or
  decode prompts as the units, a lower confidence bound that must exceed growth_max to fail). A wrong
  chunk-boundary state leaves the first chunk exact and spoils everything after it, which absolute thresholds can
  miss on a model whose state matters little. Its baseline is always the full first chunk (positions 0 to
  bucket - 1), whatever score_from says.
Every bucket is held to the same thresholds too, but to localise, not to judge: eight-plus point checks each at the
seed thresholds would fail a healthy port in most runs (a true top-1 of 98% against 0.97 misses in some 64-position
bucket more often than not), while the pooled value has 8x the positions and the growth check has stated error
rates. A bucket over the thresholds is named in the report ("over"), the verdict does not count it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from portcheck.artifacts import read_artifact
from portcheck.compare import metrics as m
from portcheck.compare import statistics as st
from portcheck.compare.compact import estimator_error
from portcheck.compare.compare import check_reference, compare_prompt, json_ready, kld_basis, parse_thresholds, verdict
from portcheck.dump.logits_file import Dump, check_comparable, read_dump

# The seed-prompt thresholds that apply to positions (the msprobe tensor checks are per prompt, not per position).
BUCKET_CHECKS = ("kld_mean_max", "kld_p99_max", "top1_agreement_min", "ppl_rel_delta_max")


def compare_corpus_files(ref_path, tgt_path, thresholds: dict, tie_tolerance: float, positions: dict,
                         score_from: int = 0, storage: dict | None = None, floor_path=None,
                         no_floor: str = "") -> dict[str, Any]:
    """The corpus windows (prefill): rows are positions in a window. storage: the config's compact_topk and
    compact_sample; where both dumps hold whole rows, the compact records' KLD error is measured on them.
    floor_path: the bf16 floor's corpus dump (FLOOR_TARGET on the same windows) for the KLD-vs-floor check;
    without one, `no_floor` says why it did not run."""
    ref, tgt = read_dump(ref_path), read_dump(tgt_path)
    result = compare_by_position(ref, tgt, thresholds, tie_tolerance, positions, score_from)
    check = floor_check(ref, result, floor_path, no_floor, thresholds, tie_tolerance, positions, score_from)
    if check:
        result["vs_floor"] = check
        result["verdict"] = position_verdict(result["pooled"], result["growth"], result["nonfinite"],
                                             {"vs bf16 floor": check})
    storage = storage or {}
    error = estimator_error(ref, tgt, int(storage.get("compact_topk", 256)), int(storage.get("compact_sample", 128)))
    return json_ready({**result, "corpus": tgt.meta.get("corpus"), "storage": {
        "reference": ref.kind, "target": tgt.kind, "reference_bytes": ref.path.stat().st_size,
        "target_bytes": tgt.path.stat().st_size, "compact_error": error}})


def compare_decode_files(ref_path, tgt_path, thresholds: dict, tie_tolerance: float, positions: dict,
                         prefill_path, floor_path=None, no_floor: str = "") -> dict[str, Any]:
    """The decode steps: the target's decode dump against the reference's teacher-forced scores of the same
    tokens (rule score_decode); rows are decode steps. prefill_path: the same target's prefill comparison
    (compare/<target>.corpus.json, or the seed prompts' compare/<target>.json) for the decode-vs-prefill check.
    floor_path: the bf16 floor's teacher-forced scores of the same tokens (rule score_decode_floor) for the
    decode-vs-floor check (paired by decode prompt); without one, `no_floor` says why it did not run."""
    ref, tgt = read_dump(ref_path), read_dump(tgt_path)
    result = compare_by_position(ref, tgt, thresholds, tie_tolerance, positions)
    decode = tgt.meta.get("decode") or {}
    result["decode"] = {"sequences": tgt.num_prompts, "steps": decode.get("max_tokens"),
                        "prompt_tokens": [len(p) for p in decode.get("prompts") or []],
                        "batches": decode.get("batches")}
    prefill_kind = "corpus_compare" if str(prefill_path).endswith(".corpus.json") else "compare"
    result["decode_vs_prefill"] = decode_vs_prefill(result, read_artifact(prefill_path, prefill_kind),
                                                    str(prefill_path), positions)
    ratios = {"decode vs prefill": result["decode_vs_prefill"]}
    check = floor_check(ref, result, floor_path, no_floor, thresholds, tie_tolerance, positions)
    if check:
        result["vs_floor"] = ratios["vs bf16 floor"] = check
    result["verdict"] = position_verdict(result["pooled"], result["growth"], result["nonfinite"], ratios)
    return json_ready(result)


def floor_check(ref: Dump, result: dict, floor_path, no_floor: str, thresholds: dict, tie_tolerance: float,
                positions: dict, score_from: int = 0) -> dict[str, Any] | None:
    """The vs-floor check of a comparison by position (`result`) on the floor's dump of the same windows or tokens,
    with the floor's KLD by bucket on them (the report's "x bf16 floor" column: paired, where the floor target's own
    decode follows other tokens); without one, "not run" with `no_floor`'s reason (a check the verdict ignores);
    None where neither is given."""
    if floor_path is None:
        return {"status": "not run", "reason": no_floor} if no_floor else None
    floor = compare_by_position(ref, read_dump(floor_path), thresholds, tie_tolerance, positions, score_from)
    buckets = [{key: b[key] for key in ("start", "end", "kld_mean")} for b in floor["buckets"]]
    return {**vs_floor(result, floor, str(floor_path), positions), "buckets": buckets}


def vs_floor(target: dict, floor: dict, floor_path: str, positions: dict) -> dict[str, Any]:
    """The target's KLD against the bf16 floor's on the same windows or tokens (paired, each sequence by the log of
    its mean KLD: the floor multiple faults are sized in): bf16 rounding on the reference's own engine is the least
    any bf16 port adds, and a sound port adds about as much (clean vLLM bf16 on the embedded model: 0.9x on the
    corpus, 1.2x on the decode path); a fault that moves the KLD to a few times the floor is caught here even where
    it stays under the fixed thresholds, which are set for the real model."""
    clip = positions["growth_floor"]
    check = st.ratio_check(sequence_side(target, clip, True), sequence_side(floor, clip, True), True,
                           positions["floor_max"], clip, positions.get("confidence", 0.95), "of the target",
                           "the bf16 floor's")
    return {"floor": floor_path, "kld_floor": check["kld_base"], "kld_target": check["kld_compared"], **check}


def decode_vs_prefill(decode: dict, prefill: dict, prefill_path: str, positions: dict) -> dict[str, Any]:
    """The decode path's KLD against the same target's prefill KLD (unpaired: other sequences): a healthy port
    decodes about as precisely as it prefills (same weights, same dtype); a decode-only fault (a recurrent state
    lost or mangled between steps) leaves prefill at its noise floor and raises decode above it."""
    check = st.ratio_check(sequence_side(decode), sequence_side(prefill, positions["growth_floor"]), False,
                           positions["growth_max"], positions["growth_floor"], positions.get("confidence", 0.95),
                           "over the decode steps", "the prefill's")
    return {"prefill": prefill_path, "kld_prefill": check["kld_base"], "kld_decode": check["kld_compared"], **check}


def sequence_side(comparison: dict, floor: float | None = None, of_means: bool = False) -> st.Side:
    """A ratio side from a comparison JSON: a comparison by position carries `sequences` (per-sequence mean log KLD
    and mean KLD); the seed prompts' comparison carries each prompt's KLD row (per_prompt.kld). of_means: each
    sequence by the log of its mean KLD, clipped at floor (statistics.side)."""
    basis = comparison.get("kld_basis") or "exact"
    if "sequences" in comparison:
        s = comparison["sequences"]
        logs = [float(st.log_kld(v, floor)) for v in s["kld_mean"]] if of_means else list(s["log_kld_mean"])
        return st.Side(logs, (comparison.get("overall") or {}).get("kld_mean"), basis)
    rows = [np.asarray([v for v in p.get("kld") or [] if v is not None]) for p in comparison.get("per_prompt") or []]
    return st.side(rows, floor, basis, of_means)


def compare_by_position(ref: Dump, tgt: Dump, thresholds: dict, tie_tolerance: float, positions: dict,
                        score_from: int = 0) -> dict[str, Any]:
    """positions: the config's compare.positions (bucket, growth_max, growth_floor, confidence); rows before
    score_from in each sequence are left out of the pooled comparison and the buckets (not of growth)."""
    check_reference(ref)
    check_comparable(ref, tgt)
    rows = [compare_prompt(ref, tgt, i, tie_tolerance) for i in range(ref.num_prompts)]
    every = _positions(rows, 0)
    scored = _positions(rows, score_from) if score_from else every
    checks = [c for c in parse_thresholds(thresholds) if c["name"] in BUCKET_CHECKS]
    basis = kld_basis(ref, tgt)
    width, floor = positions["bucket"], positions["growth_floor"]
    buckets = [_bucket(scored, start, start + width, checks, basis)
               for start in range(score_from // width * width, max(len(r.kld) for r in rows), width)]
    buckets = [b for b in buckets if b["n_positions"]]
    overall = {**_statistics(scored, np.ones(len(scored["kld"]), bool)), "kld_basis": basis}
    pooled = verdict({**overall, "nonfinite": []}, checks)
    growth = growth_check(every, width, positions, basis)
    if score_from:
        growth["note"] = (f"corpus.score_from {score_from} applies to the pooled comparison and the buckets; growth "
                          f"uses every position, so its baseline is the full first bucket 0-{width - 1}")
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
        "overall": overall,
        "pooled": pooled,
        "sequences": _sequences(scored, len(rows), floor),
        "buckets": buckets,
        "growth": growth,
        "kld_by_position": _mean_by_position(scored),
        "nonfinite": nonfinite,
        "nonfinite_count": len(nonfinite),
    }
    result["verdict"] = position_verdict(pooled, growth, nonfinite)
    return json_ready(result)


def _positions(rows, score_from: int) -> dict[str, np.ndarray]:
    """Flat arrays over every scored, finite position of every sequence: sequence, position, kld, agree, tie, and
    the reference / target log-prob of the actual next token (NaN at a sequence's last row, which has none)."""
    parts: dict[str, list] = {k: [] for k in ("sequence", "position", "kld", "kld_bound", "agree", "tie",
                                              "ref_next", "tgt_next")}
    for index, r in enumerate(rows):
        n = len(r.kld)
        keep = r.finite & (np.arange(n) >= score_from)
        parts["sequence"].append(np.full(int(keep.sum()), index))
        parts["position"].append(np.arange(n)[keep])
        parts["kld"].append(r.kld[keep])
        parts["kld_bound"].append(r.kld_bound[keep])
        parts["agree"].append(r.agree[keep])
        parts["tie"].append(r.tie[keep])
        for side, values in (("ref_next", r.ref_next), ("tgt_next", r.tgt_next)):
            parts[side].append(np.append(values, np.nan)[keep])
    return {k: np.concatenate(v) for k, v in parts.items()}


def _sequences(positions: dict, count: int, floor: float) -> dict[str, list]:
    """Per sequence: the mean KLD and the mean log KLD (clipped at the floor), the units of the ratio checks that
    other comparisons read (decode vs prefill, a mode vs its base)."""
    kld = [positions["kld"][positions["sequence"] == i] for i in range(count)]
    kept = [k for k in kld if k.size]
    return {"kld_mean": [float(k.mean()) for k in kept],
            "log_kld_mean": [float(st.log_kld(k, floor).mean()) for k in kept]}


def _statistics(positions: dict, mask: np.ndarray) -> dict[str, Any]:
    kld = positions["kld"][mask]
    agree, tie = positions["agree"][mask], positions["tie"][mask]
    ref_next, tgt_next = positions["ref_next"][mask], positions["tgt_next"][mask]
    # Every row but a sequence's last has a next token; a NaN there is the target's (a non-finite value fails).
    has_next = np.isfinite(ref_next)
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
    """One bucket's statistics and its status against the thresholds: it localises, the verdict does not count it."""
    mask = (positions["position"] >= start) & (positions["position"] < end)
    last = int(positions["position"][mask].max()) if mask.any() else end - 1
    summary = {"start": start, "end": last, **_statistics(positions, mask), "kld_basis": basis,
               "kld_is_lower_bound": basis == "lower bound"}
    result = verdict({**summary, "nonfinite": []}, checks)
    summary.update(status=result["status"] if summary["n_positions"] else "not run",
                   reasons=result["reasons"] + result["inconclusive"], notes=result["notes"])
    return summary


def growth_check(positions: dict, width: int, settings: dict, basis: str) -> dict[str, Any]:
    """KLD past the first bucket against KLD within it, each window (or decode prompt) its own unit (paired).
    positions: flat arrays sequence, position, kld (as _positions makes them)."""
    first_end = width - 1
    if not (positions["position"] > first_end).any():
        return {"status": "inconclusive", "reason": "fewer than two position buckets were scored",
                "first_bucket": f"0-{first_end}", "basis": {"compared": basis, "base": basis}}
    within, past = [], []
    for i in np.unique(positions["sequence"]):
        kld, where = positions["kld"][positions["sequence"] == i], positions["position"][positions["sequence"] == i]
        if (where <= first_end).any() and (where > first_end).any():
            within.append(kld[where <= first_end])
            past.append(kld[where > first_end])
    floor = settings["growth_floor"]
    check = st.ratio_check(st.side(past, floor, basis), st.side(within, floor, basis), True, settings["growth_max"],
                           floor, settings.get("confidence", 0.95), "past the first bucket", "the first bucket's")
    worst = _worst_bucket(positions, width)
    if check["status"] == "fail" and worst:
        check["reason"] += f"; highest in positions {worst}: the divergence grows with position"
    # kld_first / kld_later / first_bucket_exact: the names the report and the JSON readers use.
    return {"first_bucket": f"0-{first_end}", "kld_first": check["kld_base"], "kld_later": check["kld_compared"],
            "first_bucket_exact": check["kld_base"] == 0, "worst_bucket": worst, **check}


def _worst_bucket(positions: dict, width: int) -> str | None:
    later = positions["position"] >= width
    if not later.any():
        return None
    starts = positions["position"][later] // width * width
    means = {int(s): float(positions["kld"][later][starts == s].mean()) for s in np.unique(starts)}
    start = max(means, key=means.get)
    return f"{start}-{start + width - 1}"


def _mean_by_position(positions: dict) -> list[list[float]]:
    """[[position, mean KLD over windows], ...] for the KLD-against-position plot."""
    order = np.unique(positions["position"])
    return [[int(p), float(positions["kld"][positions["position"] == p].mean())] for p in order]


def position_verdict(pooled: dict, growth: dict, nonfinite: list, ratios: dict | None = None) -> dict[str, Any]:
    """fail if the pooled comparison, growth or another ratio check fails or a value is NaN/inf; inconclusive if
    none fails but one is inconclusive; else pass. ratios: {label: ratio check} besides growth."""
    checks = {"growth": growth, **(ratios or {})}
    reasons = [f"all positions: {reason}" for reason in pooled["reasons"]]
    reasons += [f"{label}: {c['reason']}" for label, c in checks.items() if c["status"] == "fail"]
    if nonfinite:
        reasons.append(f"NaN/inf at {len(nonfinite)} positions (sequence, row): "
                       + ", ".join(f"({e['prompt']}, {e['row']})" for e in nonfinite[:10]))
    inconclusive = [f"all positions: {text}" for text in pooled["inconclusive"]]
    inconclusive += [f"{label}: {c['reason']}" for label, c in checks.items() if c["status"] == "inconclusive"]
    status = "fail" if reasons else "inconclusive" if inconclusive else "pass"
    return {"status": status, "reasons": reasons, "inconclusive": inconclusive, "notes": list(pooled["notes"])}
