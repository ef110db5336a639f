"""The KLD of two compact per-position records (dump/compact.py: top-k, rest mass, shared sample of ids).

KLD(P || Q), P the reference's record, Q the target's, H the ids in both top-k lists:
- lower bound (exact as a bound): the ids of H as they are and every other id merged into one bin. Merging
  outcomes cannot increase KL (data-processing inequality), so this never exceeds the true KLD.
- estimate: the lower bound plus p_rest x KL(P_rest || Q_rest), the divergence inside the merged bin (P_rest, Q_rest:
  the distributions restricted to the ids outside H), estimated from the sample ids outside H by self-normalised
  importance sampling (uniform draws weighted by p). It needs sample log-probs on both sides; without them only
  the bound is known. The estimate is never below the bound. Measured on the embedded model's corpus (2,044
  positions, bf16 vs fp32, k 256, 128 sample ids of 2,048): mean within 0.06% of the exact KLD, p99 within 0.1%;
  the lower bound alone 9% under.
"""

from __future__ import annotations

import numpy as np

from portcheck.compare import metrics as m
from portcheck.dump.compact import CompactRows, bytes_per_position, from_topk, reduce_logprobs, sample_ids

CHUNK_ROWS = 64  # rows matched at once: 64 x 256 x 256 booleans is 4 MB


def kld_basis(ref: CompactRows, tgt: CompactRows) -> str:
    both_sampled = ref.sample_logprobs is not None and tgt.sample_logprobs is not None
    return "estimate" if both_sampled and np.array_equal(ref.sample_ids, tgt.sample_ids) else "lower bound"


def kld_compact(ref: CompactRows, tgt: CompactRows) -> tuple[np.ndarray, np.ndarray | None]:
    """(lower bound, estimate) of KLD(ref || tgt) per row; the estimate is None where kld_basis says "lower bound"."""
    estimate = kld_basis(ref, tgt) == "estimate"
    parts = [_kld_chunk(ref.rows(part), tgt.rows(part), estimate)
             for part in (slice(s, s + CHUNK_ROWS) for s in range(0, len(ref), CHUNK_ROWS))]
    lower = np.concatenate([np.zeros(0)] + [bound for bound, _ in parts])
    return lower, np.concatenate([np.zeros(0)] + [value for _, value in parts]) if estimate else None


def _kld_chunk(ref: CompactRows, tgt: CompactRows, estimate: bool) -> tuple[np.ndarray, np.ndarray | None]:
    ref_valid, tgt_valid = np.isfinite(ref.topk_logprobs), np.isfinite(tgt.topk_logprobs)
    match = (ref.topk_ids[:, :, None] == tgt.topk_ids[:, None, :]) & ref_valid[:, :, None] & tgt_valid[:, None, :]
    ref_shared = match.any(axis=2)  # [T, k_ref]: this reference id is in the target's top-k too
    tgt_shared = match.any(axis=1)  # [T, k_tgt]
    tgt_at_ref = np.where(match, tgt.topk_logprobs[:, None, :], 0.0).sum(axis=2)
    p, q = np.exp(ref.topk_logprobs), np.exp(tgt.topk_logprobs)
    head = np.where(ref_shared, p * (ref.topk_logprobs - tgt_at_ref), 0.0).sum(axis=1)
    # The merged bin: the mass outside the top-k plus the top-k ids the other side does not share.
    p_rest = np.exp(ref.rest_logmass) + np.where(ref_shared | ~ref_valid, 0.0, p).sum(axis=1)
    q_rest = np.maximum(np.exp(tgt.rest_logmass) + np.where(tgt_shared | ~tgt_valid, 0.0, q).sum(axis=1),
                        m.REST_MASS_FLOOR)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_ratio = np.log(p_rest) - np.log(q_rest)
    lower = np.maximum(head + np.where(p_rest > 0, p_rest * log_ratio, 0.0), 0.0)
    if not estimate:
        return lower, None
    inside = _rest_divergence(ref, tgt, ref_shared, log_ratio)
    return lower, lower + np.where(p_rest > 0, p_rest * inside, 0.0)


def _rest_divergence(ref: CompactRows, tgt: CompactRows, ref_shared: np.ndarray, log_ratio: np.ndarray) -> np.ndarray:
    """KL(P_rest || Q_rest) from the sample ids outside the shared top-k, as sum p_i f(d_i) / sum p_i over them with
    d_i = log(p_i / p_rest) - log(q_i / q_rest) and f(d) = d + exp(-d) - 1 (0 where no sampled id falls outside).
    f(d) >= 0 has the same expectation under P_rest as d itself (E[exp(-d)] = sum of q_i / q_rest = 1), but no
    first-order term: with d alone the sampling noise is of the order of d while the KL is of the order of d^2 / 2
    (measured on the embedded model's corpus: with d the mean came out 2.5% high and the p99 twice the exact one;
    with f both are within 0.1%)."""
    shared_ids = np.where(ref_shared, ref.topk_ids, -1)
    outside = ~(ref.sample_ids[None, :, None] == shared_ids[:, None, :]).any(axis=2)  # [T, s]
    p = np.where(outside, np.exp(ref.sample_logprobs), 0.0)
    with np.errstate(invalid="ignore", over="ignore"):
        d = ref.sample_logprobs - tgt.sample_logprobs - log_ratio[:, None]
        terms = np.where(p > 0, p * (d + np.expm1(-d)), 0.0)
    weight = p.sum(axis=1)
    return np.where(weight > 0, terms.sum(axis=1) / np.where(weight > 0, weight, 1.0), 0.0)


def top1_and_tie(ref: CompactRows, tgt: CompactRows, tie_tolerance: float) -> tuple[np.ndarray, np.ndarray]:
    """(agree, tie) as metrics.top1_agreement_rows. The reference's gap to the target's top-1 is known where that id
    is in the reference's top-k; outside it the gap is at least top-1 - k-th log-prob, which is taken (a tie there
    is a tie with an id the reference ranks below its k-th)."""
    ref_top1, tgt_top1 = ref.topk_ids[:, 0], tgt.topk_ids[:, 0]
    agree = ref_top1 == tgt_top1
    found = ref.topk_ids == tgt_top1[:, None]
    last = np.where(np.isfinite(ref.topk_logprobs), ref.topk_logprobs, np.inf).min(axis=1)
    at_target = np.where(found.any(axis=1), np.where(found, ref.topk_logprobs, 0.0).sum(axis=1), last)
    gap = ref.topk_logprobs[:, 0] - at_target
    return agree, ~agree & (gap <= tie_tolerance)


def paired_records(ref, tgt, i: int) -> tuple[CompactRows, CompactRows]:
    """Prompt i of two dumps (at least one not whole rows) as compact records on the same sample ids and top-k."""
    sample = ref.sample_ids if ref.sample_ids is not None else tgt.sample_ids
    topk = max(d.width for d in (ref, tgt) if d.kind != "full")
    return records(ref, i, topk, sample), records(tgt, i, topk, sample)


def records(dump, i: int, topk: int, sample: np.ndarray | None) -> CompactRows:
    """Prompt i of any dump as compact records: whole rows are reduced (with the other side's sample ids), top-k
    rows taken with their 1 - sum rest mass, compact rows read."""
    if dump.kind == "full":
        return reduce_logprobs(m.log_softmax(dump.logits[i]), topk, sample)
    if dump.kind == "topk":
        return from_topk(dump.topk_ids[i], dump.topk_logprobs[i])
    sampled = None if dump.sample_logprobs is None else np.asarray(dump.sample_logprobs[i], np.float64)
    return CompactRows(np.asarray(dump.topk_ids[i], np.int64), np.asarray(dump.topk_logprobs[i], np.float64),
                       np.asarray(dump.rest_logmass[i], np.float64), sampled, dump.sample_ids)


def nonfinite(rows: CompactRows) -> np.ndarray:
    """Rows holding a NaN or an infinity where a record has none by design (a covered row's rest is -inf)."""
    bad = m.nonfinite_rows(rows.topk_logprobs) | np.isnan(rows.rest_logmass) | (rows.rest_logmass == np.inf)
    return bad if rows.sample_logprobs is None else bad | m.nonfinite_rows(rows.sample_logprobs)


def estimator_error(ref, tgt, topk: int, sample_count: int) -> dict | None:
    """Where both dumps hold whole rows: the compact records' KLD (estimate and lower bound, at the configured
    top-k and sample) against the exact KLD of the same rows, so every run measures what compact storage would
    cost it. None when a side is not whole rows."""
    if not ref.kind == tgt.kind == "full":
        return None
    sample = sample_ids(ref.width, sample_count) if sample_count else None
    exact, lower, estimate = [], [], []
    for i in range(ref.num_prompts):
        a, b = m.log_softmax(ref.logits[i]), m.log_softmax(tgt.logits[i])
        finite = ~m.nonfinite_rows(a) & ~m.nonfinite_rows(b)
        a, b = a[finite], b[finite]
        bound, estimated = kld_compact(reduce_logprobs(a, topk, sample), reduce_logprobs(b, topk, sample))
        exact.append(m.kld_rows(a, b))
        lower.append(bound)
        estimate.append(estimated if estimated is not None else bound)
    exact, lower, estimate = (np.concatenate(v) for v in (exact, lower, estimate))
    mean = float(exact.mean()) if exact.size else None

    def relative(values: np.ndarray) -> float | None:
        return float(values.mean() / mean - 1.0) if mean else None

    return {
        "topk": min(topk, ref.width), "sample": 0 if sample is None else len(sample), "vocab": ref.width,
        "positions": int(exact.size),
        "bytes_per_position": bytes_per_position(topk, 0 if sample is None else len(sample)),
        "full_bytes_per_position": 4 * ref.width, "exact_mean": mean,
        "estimate_mean": float(estimate.mean()) if sample is not None else None,
        "estimate_rel_error": relative(estimate) if sample is not None else None,
        "lower_bound_mean": float(lower.mean()), "lower_bound_rel_error": relative(lower),
        "exact_p99": float(np.percentile(exact, 99)) if exact.size else None,
        "estimate_p99": float(np.percentile(estimate, 99)) if exact.size and sample is not None else None,
    }
