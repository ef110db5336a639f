"""Compare a target's logit dump with the reference's: metrics per position, per prompt, overall, and a verdict.

The reference must be a full-logits or a compact dump. A top-k target (vLLM prompt logprobs) gets exact top-1,
top-5 (k >= 5), Δp and PPL, a lower bound of the KLD, and no msprobe tensor metrics (there is no full tensor).
Where either side is compact (dump/compact.py), both are compared as compact records (compare/compact.py): the
KLD is an estimate when both have the same sample ids' log-probs, else a lower bound (`kld_basis`).
Rows holding NaN/inf on either side are listed, left out of every metric, and fail the verdict.
The verdict has three outcomes (`verdict`): pass, fail, inconclusive; a lower bound never passes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from portcheck.compare import compact as c
from portcheck.compare import metrics as m
from portcheck.dump.logits_file import Dump, check_comparable, first_difference, read_dump
from portcheck.errors import PortcheckError

CHUNK_ROWS = 32  # rows of [T, V] logits handled at once: 32 x 248k float64 is ~64 MB per temporary

# threshold name -> (summary key it tests, op, what is tested)
CHECKS = {
    "kld_mean_max": ("kld_mean", "<=", "mean KLD(reference || target) over positions"),
    "kld_p99_max": ("kld_p99", "<=", "99th percentile of the per-position KLD"),
    "top1_agreement_min": (
        "top1_agreement_with_ties",
        ">=",
        "top-1 agreement counting ties as agreement: (agree + ties) / n",
    ),
    "cosine_min": ("cosine_min", ">=", "lowest per-prompt cosine similarity of the raw logits"),
    "max_abs_err_max": ("max_abs_err", "<=", "largest absolute logit difference"),
    "ppl_rel_delta_max": ("ppl_rel_delta", "<=", "|ppl_target / ppl_reference - 1|"),
    "msprobe_rule": ("msprobe_failed_prompts", "<=", "prompt logit tensors failing msprobe's pass rule"),
}
# What the KLD statistics are, by how they were computed: the statistics that are only lower bounds.
LOWER_BOUND_KEYS = {"exact": (), "estimate": (), "lower bound": ("kld_mean", "kld_p99")}
MSPROBE_KEYS = (
    "cosine_min",
    "cosine_mean",
    "max_abs_err",
    "max_rel_err",
    "thousandth_err_ratio",
    "five_thousandths_err_ratio",
    "msprobe_failed_prompts",
)


def compare_files(
    ref_path: str | Path, tgt_path: str | Path, thresholds: dict[str, Any], tie_tolerance: float
) -> dict[str, Any]:
    return compare_dumps(read_dump(ref_path), read_dump(tgt_path), thresholds, tie_tolerance)


def compare_dumps(ref: Dump, tgt: Dump, thresholds: dict[str, Any], tie_tolerance: float) -> dict[str, Any]:
    """JSON-ready comparison (no NaN: None where a metric is unavailable)."""
    checks = parse_thresholds(thresholds)
    check_reference(ref)
    check_comparable(ref, tgt)
    basis = msprobe_basis(ref, tgt)
    prompts = [compare_prompt(ref, tgt, i, tie_tolerance, basis) for i in range(ref.num_prompts)]
    result = _summarize(prompts, kld_basis(ref, tgt))
    result.update(
        reference={"name": ref.name, "kind": ref.kind, "path": str(ref.path)},
        target={"name": tgt.name, "kind": tgt.kind, "path": str(tgt.path)},
        tie_tolerance=tie_tolerance,
        msprobe_basis=basis if ref.kind == tgt.kind == "full" else None,
        per_prompt=[p.as_dict() for p in prompts],
    )
    result["verdict"] = verdict(result, checks)
    return json_ready(result)


def check_reference(ref: Dump) -> None:
    if ref.kind == "topk":
        raise PortcheckError(f"the reference {ref.name} ({ref.path}) must be a full-logits or compact dump, not top-k "
                             "log-probs: dump the reference with an engine that gives whole rows (hf)")


def kld_basis(ref: Dump, tgt: Dump) -> str:
    """exact (both whole rows), estimate (compact records with sample log-probs on both sides), or lower bound."""
    if ref.kind == tgt.kind == "full":
        return "exact"
    samples = [d.sample_ids for d in (ref, tgt) if d.kind != "full"]
    shared = all(s is not None and np.array_equal(s, samples[0]) for s in samples)
    return "estimate" if shared and "topk" not in (ref.kind, tgt.kind) else "lower bound"


def msprobe_basis(ref: Dump, tgt: Dump) -> str:
    """msprobe's tensor metrics compare like with like: raw logits, unless a side only has log-probs (vLLM's
    full-vocabulary dumps), in which case both sides are compared as log-probs (logits minus their logsumexp)."""
    values = {d.meta.get("full_values", "logits") for d in (ref, tgt)}
    return "logprobs" if "logprobs" in values else "logits"


# ---------------------------------------------------------------- per prompt


@dataclass
class _PromptRows:
    """Row-level results of one prompt; rows flagged non-finite hold NaN / False and are left out."""

    index: int
    finite: np.ndarray  # bool [T]: both sides finite
    kld: np.ndarray  # [T]
    agree: np.ndarray  # bool [T]
    tie: np.ndarray  # bool [T]
    overlap: np.ndarray | None  # [T]; None when the target has fewer than 5 ids per row
    ref_next: np.ndarray  # [T-1] reference log-prob of the actual next token input_ids[t+1]
    tgt_next: np.ndarray  # [T-1]
    nonfinite: list[dict[str, Any]]
    stats: m.TensorStats | None  # msprobe sums over finite rows; None for a top-k target
    nan_inf_mismatch: bool
    greedy_prefix: int | None = None
    greedy_first_agrees: bool | None = None
    kld_lower: np.ndarray | None = None  # [T] per-row lower bound where `kld` is an estimate

    @property
    def kld_bound(self) -> np.ndarray:
        return self.kld if self.kld_lower is None else self.kld_lower

    @property
    def next_valid(self) -> np.ndarray:
        return self.finite[:-1]

    def msprobe(self) -> dict[str, Any]:
        if self.stats is None:
            return dict.fromkeys(("cosine", "max_abs_err", "max_rel_err", "msprobe_pass"))
        values = {k: v for k, v in self.stats.as_dict().items() if not k.endswith("_ratio")}
        values["msprobe_pass"] = m.msprobe_pass(values["cosine"], values["max_abs_err"], self.nan_inf_mismatch)
        return values

    def as_dict(self) -> dict[str, Any]:
        kld = self.kld[self.finite]
        mismatches = np.flatnonzero(self.finite & ~self.agree)
        first = int(mismatches[0]) if mismatches.size else None
        valid = self.next_valid
        return {
            "index": self.index,
            "n_rows": int(self.finite.size),
            "n_positions": int(self.finite.sum()),
            "kld_mean": float(kld.mean()) if kld.size else None,
            "kld_max": float(kld.max()) if kld.size else None,
            "kld": self.kld.tolist(),
            "top1_agreement": _share(self.agree[self.finite]),
            "top1_ties": int(self.tie.sum()),
            "first_top1_mismatch_row": first,
            "first_top1_mismatch_is_tie": None if first is None else bool(self.tie[first]),
            "rms_delta_p": m.rms(m.delta_p(self.ref_next[valid], self.tgt_next[valid])),
            "ppl_ref": m.perplexity(self.ref_next[valid]),
            "ppl_target": m.perplexity(self.tgt_next[valid]),
            **self.msprobe(),
            "greedy_common_prefix": self.greedy_prefix,
            "greedy_first_token_agrees": self.greedy_first_agrees,
            "nonfinite_count": len(self.nonfinite),
        }


def compare_prompt(ref: Dump, tgt: Dump, i: int, tie_tolerance: float, basis: str = "logits") -> _PromptRows:
    if "compact" in (ref.kind, tgt.kind):
        return _compact_prompt(ref, tgt, i, tie_tolerance)
    ids = np.asarray(ref.input_ids[i])
    ref_logits = ref.logits[i]
    target = _FullTarget(tgt, i) if tgt.kind == "full" else _TopkTarget(tgt, i, ref.width)
    chunks = [
        _compare_chunk(ref_logits[start : start + CHUNK_ROWS], target, start, ids, tie_tolerance, basis)
        for start in range(0, len(ids), CHUNK_ROWS)
    ]
    rows = {key: _concat([c[key] for c in chunks]) for key in ROW_KEYS}
    stats = None if tgt.kind == "topk" else sum((c["stats"] for c in chunks), m.TensorStats())
    ref_bad, tgt_bad = (_concat([c[key] for c in chunks]) for key in ("ref_bad", "tgt_bad"))
    prompt = _PromptRows(
        index=i,
        nonfinite=_nonfinite_list(i, ref_bad, tgt_bad),
        stats=stats,
        nan_inf_mismatch=any(c["nan_inf_mismatch"] for c in chunks),
        **rows,
    )
    _add_greedy(prompt, ref, tgt, i)
    return prompt


ROW_KEYS = ("finite", "kld", "agree", "tie", "overlap", "ref_next", "tgt_next")


def _compare_chunk(ref_logits, target, start: int, ids, tie_tolerance: float, basis: str) -> dict[str, Any]:
    rows = slice(start, start + len(ref_logits))
    next_ids = ids[start + 1 : rows.stop + 1]
    ref_lp = m.log_softmax(ref_logits)
    tgt = target.chunk(rows, next_ids, ref_lp)
    ref_bad = m.nonfinite_rows(ref_logits)
    finite = ~ref_bad & ~tgt["bad"]
    agree, tie = m.top1_agreement_rows(ref_lp, tgt["top1"], tie_tolerance)
    overlap = None if tgt["top_n"] is None else m.top_n_overlap_rows(m.top_n_ids(ref_lp), tgt["top_n"])
    next_finite = finite[: len(next_ids)]
    raw = tgt.get("raw")
    if raw is not None and basis == "logprobs":
        raw, ref_logits = m.log_softmax(raw), ref_lp
    return {
        "finite": finite,
        "ref_bad": ref_bad,
        "tgt_bad": tgt["bad"],
        "kld": np.where(finite, tgt["kld"], np.nan),
        "agree": agree & finite,
        "tie": tie & finite,
        "overlap": None if overlap is None else np.where(finite, overlap, np.nan),
        "ref_next": np.where(next_finite, m.next_token_logprobs(ref_lp, next_ids), np.nan),
        "tgt_next": np.where(next_finite, tgt["next"], np.nan),
        "stats": None if raw is None else m.tensor_stats(raw[finite], ref_logits[finite]),
        "nan_inf_mismatch": raw is not None and m.nonfinite_mismatch(raw, ref_logits),
    }


class _FullTarget:
    def __init__(self, dump: Dump, i: int):
        self.logits = dump.logits[i]

    def chunk(self, rows: slice, next_ids: np.ndarray, ref_lp: np.ndarray) -> dict[str, Any]:
        raw = self.logits[rows]
        lp = m.log_softmax(raw)
        return {
            "raw": raw,
            "bad": m.nonfinite_rows(raw),
            "kld": m.kld_rows(ref_lp, lp),
            "top1": lp.argmax(axis=1),
            "top_n": m.top_n_ids(lp),
            "next": m.next_token_logprobs(lp, next_ids),
        }


class _TopkTarget:
    def __init__(self, dump: Dump, i: int, vocab: int):
        self.ids, self.logprobs = m.sort_topk(dump.topk_ids[i], dump.topk_logprobs[i])
        self.token_logprobs = np.asarray(dump.token_logprobs[i], dtype=np.float64)
        self.top_n = min(m.TOP_N, vocab)
        if self.ids.size and (self.ids.min() < 0 or self.ids.max() >= vocab):
            raise PortcheckError(
                f"{dump.path}: prompt {i} has top-k ids outside the reference vocabulary [0, {vocab}); "
                "dump the target with the reference's model and tokenizer"
            )

    def chunk(self, rows: slice, next_ids: np.ndarray, ref_lp: np.ndarray) -> dict[str, Any]:
        ids, lp = self.ids[rows], self.logprobs[rows]
        next_lp = self.token_logprobs[rows][: len(next_ids)]
        bad = m.nonfinite_rows(lp)
        bad[: len(next_ids)] |= ~np.isfinite(next_lp)  # the last row has no next token: its NaN is by design
        return {
            "bad": bad,
            "kld": m.kld_rows_topk(ref_lp, ids, lp),
            "top1": ids[:, 0],
            "top_n": ids[:, : self.top_n] if ids.shape[1] >= self.top_n else None,
            "next": next_lp,
        }


def _compact_prompt(ref: Dump, tgt: Dump, i: int, tie_tolerance: float) -> _PromptRows:
    """Both sides as compact records (compare/compact.py): estimated or bounded KLD, top-1 from the top-k lists,
    next-token log-probs as stored; no msprobe tensor metrics."""
    a, b = c.paired_records(ref, tgt, i)
    if ref.kind == "full" and b.topk_ids.size and (b.topk_ids.min() < 0 or b.topk_ids.max() >= ref.width):
        raise PortcheckError(f"{tgt.path}: prompt {i} has top-k ids outside the reference vocabulary [0, {ref.width}); "
                             "dump the target with the reference's model and tokenizer")
    lower, estimate = c.kld_compact(a, b)
    ref_bad, tgt_bad = c.nonfinite(a), c.nonfinite(b)
    ref_next, tgt_next = _next_logprobs(ref, i), _next_logprobs(tgt, i)
    tgt_bad[: len(tgt_next)] |= ~np.isfinite(tgt_next)
    finite = ~ref_bad & ~tgt_bad
    agree, tie = c.top1_and_tie(a, b, tie_tolerance)
    shown = estimate if estimate is not None else lower
    overlap = m.top_n_overlap_rows(a.topk_ids[:, : m.TOP_N], b.topk_ids[:, : m.TOP_N]) \
        if min(a.topk_ids.shape[1], b.topk_ids.shape[1]) >= m.TOP_N else None
    next_finite = finite[: len(ref_next)]
    prompt = _PromptRows(
        index=i, finite=finite, kld=np.where(finite, shown, np.nan), agree=agree & finite, tie=tie & finite,
        overlap=None if overlap is None else np.where(finite, overlap, np.nan),
        ref_next=np.where(next_finite, ref_next, np.nan), tgt_next=np.where(next_finite, tgt_next, np.nan),
        nonfinite=_nonfinite_list(i, ref_bad, tgt_bad), stats=None, nan_inf_mismatch=False,
        kld_lower=None if estimate is None else np.where(finite, lower, np.nan),
    )
    _add_greedy(prompt, ref, tgt, i)
    return prompt


def _next_logprobs(dump: Dump, i: int) -> np.ndarray:
    """The log-prob of the actual next token at every row but the last."""
    ids = np.asarray(dump.input_ids[i])
    if dump.kind == "full":
        return m.next_token_logprobs(m.log_softmax(dump.logits[i]), ids[1:])
    return np.asarray(dump.token_logprobs[i], dtype=np.float64)[: len(ids) - 1]


def _add_greedy(prompt: _PromptRows, ref: Dump, tgt: Dump, i: int) -> None:
    if ref.greedy_ids is None or tgt.greedy_ids is None:
        return
    a, b = ref.greedy_ids[i], tgt.greedy_ids[i]
    difference = first_difference(a, b)
    prompt.greedy_prefix = len(a) if difference is None else difference
    if len(a) and len(b):
        prompt.greedy_first_agrees = prompt.greedy_prefix >= 1


def _nonfinite_list(i: int, ref_bad: np.ndarray, tgt_bad: np.ndarray) -> list[dict[str, Any]]:
    return [
        {"prompt": i, "row": int(row), "side": side}
        for side, bad in (("reference", ref_bad), ("target", tgt_bad))
        for row in np.flatnonzero(bad)
    ]


def _concat(parts: list):
    return None if any(p is None for p in parts) else np.concatenate(parts)


def _share(flags: np.ndarray) -> float | None:
    return float(np.mean(flags)) if flags.size else None


# ---------------------------------------------------------------- over all prompts


def _summarize(prompts: list[_PromptRows], basis: str) -> dict[str, Any]:
    finite = np.concatenate([p.finite for p in prompts])
    kld = np.concatenate([p.kld[p.finite] for p in prompts])
    bound = np.concatenate([p.kld_bound[p.finite] for p in prompts])
    result = {f"kld_{k}": v for k, v in m.kld_summary(kld).items()}
    result.update(
        kld_basis=basis,
        kld_is_lower_bound=basis == "lower bound",
        kld_mean_lower_bound=float(bound.mean()) if bound.size else None,
        n_prompts=len(prompts),
        n_rows=int(finite.size),
        n_positions=int(finite.sum()),
        **_top_n_summary(prompts),
        **_next_token_summary(prompts),
        **_msprobe_summary(prompts),
        **_greedy_summary(prompts),
    )
    nonfinite = [entry for p in prompts for entry in p.nonfinite]
    result.update(nonfinite=nonfinite, nonfinite_count=len(nonfinite))
    return result


def _top_n_summary(prompts: list[_PromptRows]) -> dict[str, Any]:
    agree = np.concatenate([p.agree[p.finite] for p in prompts])
    ties = int(sum(p.tie.sum() for p in prompts))
    overlaps = [p.overlap[p.finite] for p in prompts if p.overlap is not None]
    return {
        "top1_agreement": _share(agree),
        "top1_ties": ties,
        "top1_agreement_with_ties": (int(agree.sum()) + ties) / agree.size if agree.size else None,
        "top5_overlap": _share(np.concatenate(overlaps)) if len(overlaps) == len(prompts) else None,
    }


def _next_token_summary(prompts: list[_PromptRows]) -> dict[str, Any]:
    ref_next = np.concatenate([p.ref_next[p.next_valid] for p in prompts])
    tgt_next = np.concatenate([p.tgt_next[p.next_valid] for p in prompts])
    dp = m.delta_p(ref_next, tgt_next)
    ppl_ref, ppl_tgt = m.perplexity(ref_next), m.perplexity(tgt_next)
    ratio = None if ppl_ref is None or ppl_tgt is None else ppl_tgt / ppl_ref
    return {
        "n_next_token_positions": int(ref_next.size),
        "mean_delta_p": float(dp.mean()) if dp.size else None,
        "rms_delta_p": m.rms(dp),
        "ppl_ref": ppl_ref,
        "ppl_target": ppl_tgt,
        "delta_ppl": None if ratio is None else ppl_tgt - ppl_ref,
        "ppl_ratio": ratio,
        "ppl_rel_delta": None if ratio is None else abs(ratio - 1.0),
    }


def _msprobe_summary(prompts: list[_PromptRows]) -> dict[str, Any]:
    if any(p.stats is None for p in prompts):
        return dict.fromkeys(MSPROBE_KEYS)
    cosines = [p.stats.cosine for p in prompts if p.stats.cosine is not None]
    total = sum((p.stats for p in prompts), m.TensorStats()).as_dict()
    return {
        "cosine_min": min(cosines) if cosines else None,
        "cosine_mean": float(np.mean(cosines)) if cosines else None,
        "max_abs_err": total["max_abs_err"],
        "max_rel_err": total["max_rel_err"],
        "thousandth_err_ratio": total["thousandth_err_ratio"],
        "five_thousandths_err_ratio": total["five_thousandths_err_ratio"],
        "msprobe_failed_prompts": sum(not p.msprobe()["msprobe_pass"] for p in prompts),
    }


def _greedy_summary(prompts: list[_PromptRows]) -> dict[str, Any]:
    prefixes = [p.greedy_prefix for p in prompts if p.greedy_prefix is not None]
    firsts = [p.greedy_first_agrees for p in prompts if p.greedy_first_agrees is not None]
    return {
        "greedy_first_token_agreement": float(np.mean(firsts)) if firsts else None,
        "greedy_common_prefix_mean": float(np.mean(prefixes)) if prefixes else None,
    }


# ---------------------------------------------------------------- verdict


def parse_thresholds(thresholds: dict[str, Any]) -> list[dict[str, Any]]:
    """Validate {name: {"value": ..., "anchor": "..."}}; names are the keys of CHECKS."""
    parsed = []
    for name, spec in (thresholds or {}).items():
        if name not in CHECKS:
            raise PortcheckError(f"unknown threshold {name!r}; supported: {', '.join(CHECKS)}")
        if not isinstance(spec, dict) or "value" not in spec:
            raise PortcheckError(f"threshold {name!r} must be a mapping with 'value' and 'anchor', got {spec!r}")
        value = spec["value"]
        if name == "msprobe_rule":
            if not isinstance(value, bool):
                raise PortcheckError(f"threshold 'msprobe_rule' value must be true or false, got {value!r}")
            if not value:
                continue
            value = 0
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            raise PortcheckError(f"threshold {name!r} value must be a number, got {value!r}")
        parsed.append({"name": name, "threshold": value, "anchor": str(spec.get("anchor", ""))})
    return parsed


def verdict(summary: dict[str, Any], checks: list[dict[str, Any]]) -> dict[str, Any]:
    """pass only if every check passes on an exact value or an estimate and no value is NaN/inf; fail if any check
    fails (a non-finite value fails, naming it); otherwise inconclusive: a check whose metric is unavailable, or whose
    value is a lower bound under its maximum (the true value may be over it), is inconclusive, never a pass."""
    results = [_evaluate(check, summary) for check in checks]
    reasons = [r["reason"] for r in results if r["status"] == "fail"]
    reasons += _nonfinite_reasons(summary["nonfinite"])
    inconclusive = [r["reason"] for r in results if r["status"] == "inconclusive"]
    notes = []
    if summary.get("kld_basis") == "estimate":
        notes.append("KLD is estimated from compact records (top-k, rest mass, shared sample of ids: see the method "
                     "note); kld_mean_lower_bound is the bound it cannot fall below")
    status = "fail" if reasons else "inconclusive" if inconclusive else "pass"
    return {"status": status, "checks": results, "reasons": reasons, "inconclusive": inconclusive, "notes": notes}


def _evaluate(check: dict[str, Any], summary: dict[str, Any]) -> dict[str, Any]:
    metric, op, description = CHECKS[check["name"]]
    value = summary.get(metric)
    lower_bound = metric in LOWER_BOUND_KEYS[_basis(summary)]
    result = {**check, "metric": metric, "description": description, "value": value, "op": op,
              "lower_bound": lower_bound}
    if value is None:
        return {**result, "passed": None, "status": "inconclusive",
                "reason": f"{check['name']}: {metric} is not available for this comparison (a required check)"}
    if not math.isfinite(value):
        return {**result, "passed": False, "status": "fail", "value_text": str(value),
                "reason": f"{check['name']}: {metric} is {value} (not finite): {description}"}
    passed = value <= check["threshold"] if op == "<=" else value >= check["threshold"]
    if passed and lower_bound:
        return {**result, "passed": None, "status": "inconclusive",
                "reason": f"{check['name']}: {metric} = {_fmt(value)} is a lower bound (top-k log-probs) under "
                          f"{check['threshold']}: the true value may be over it"}
    # A lower bound over a maximum is a proven failure: the true value is at least that.
    return {**result, "passed": passed, "status": "pass" if passed else "fail",
            "reason": "" if passed else _failure_text(result)}


def _basis(summary: dict[str, Any]) -> str:
    """The summary's KLD basis (older artifacts and bucket summaries carry only kld_is_lower_bound)."""
    return summary.get("kld_basis") or ("lower bound" if summary.get("kld_is_lower_bound") else "exact")


def _failure_text(result: dict[str, Any]) -> str:
    return (
        f"{result['name']}: {result['metric']} = {_fmt(result['value'])} is not {result['op']} "
        f"{result['threshold']} ({result['description']}; anchor: {result['anchor'] or 'none given'})"
    )


def _nonfinite_reasons(nonfinite: list[dict[str, Any]]) -> list[str]:
    reasons = []
    for side in ("reference", "target"):
        rows_by_prompt: dict[int, list[int]] = {}
        for entry in nonfinite:
            if entry["side"] == side:
                rows_by_prompt.setdefault(entry["prompt"], []).append(entry["row"])
        if rows_by_prompt:
            where = "; ".join(f"prompt {i} rows {_ranges(rows)}" for i, rows in rows_by_prompt.items())
            count = sum(len(rows) for rows in rows_by_prompt.values())
            reasons.append(f"{side} has NaN/inf values at {count} positions: {where}")
    return reasons


def _ranges(rows: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2, 5'"""
    spans = []
    start = prev = rows[0]
    for row in rows[1:] + [None]:
        if row is None or row != prev + 1:
            spans.append(str(start) if start == prev else f"{start}-{prev}")
            start = row
        prev = row
    return ", ".join(spans)


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def json_ready(value: Any) -> Any:
    """Plain Python types for json.dumps(allow_nan=False): NaN/inf become None."""
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [json_ready(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value
