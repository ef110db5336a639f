"""Comparison metrics: pure numpy, computed in float64.

Anchors (reference.md section 2):
- llama.cpp `perplexity --kl-divergence`: per-token KLD(base || test), Δp of the correct token, RMS Δp,
  "same top p", PPL of both, KLD quantiles.
- Ascend msprobe compare: per-tensor cosine, MaxAbsErr, relative error, MaxRelativeErr, one-thousandth and
  five-thousandths error ratios, and its pass rule.

Row convention (engines/base.py): row t is the distribution of the token after input_ids[0..t], so the
actual next token of row t is input_ids[t+1] and the last row has none.
Arguments named `*_logprobs` are [T, V] log-probabilities (see `log_softmax`), `ref` is the trusted side.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

# Row primitives shared with the dump stage's compact records, re-exported for the metrics' users.
from portcheck.logprobs import (REST_MASS_FLOOR, TOP_N, log_rest_mass, log_softmax,  # noqa: F401
                                next_token_logprobs, sort_topk, top_n_ids)

# msprobe Const.FLOAT_EPSILON = np.finfo(float).eps, added to both sides where the bench value is 0.
MSPROBE_EPSILON = float(np.finfo(np.float64).eps)
THOUSANDTH, FIVE_THOUSANDTHS = 0.001, 0.005
# msprobe CompareConst: COS_THRESHOLD, MAX_ABS_ERR_THRESHOLD, COS_MAX_THRESHOLD, MAX_ABS_ERR_MAX_THRESHOLD
MSPROBE_COS, MSPROBE_ABS, MSPROBE_COS_HARD, MSPROBE_ABS_HARD = 0.99, 0.001, 0.9, 1.0


def nonfinite_rows(values: np.ndarray) -> np.ndarray:
    """True for each row (or element of a 1-D array) holding a NaN or an infinity."""
    finite = np.isfinite(values)
    return ~finite.all(axis=1) if finite.ndim == 2 else ~finite


def _p_log_ratio(p: np.ndarray, log_p: np.ndarray, log_q: np.ndarray) -> np.ndarray:
    """p (log p - log q) with the convention 0 log 0 = 0."""
    with np.errstate(invalid="ignore"):
        return np.where(p > 0, p * (log_p - log_q), 0.0)


def kld_rows(ref_logprobs: np.ndarray, tgt_logprobs: np.ndarray) -> np.ndarray:
    """Per-row KLD(ref || tgt) = sum_i p_ref,i (log p_ref,i - log p_tgt,i), llama.cpp's direction.
    KL is >= 0; the tiny negatives float rounding can give are clipped (NaN stays NaN)."""
    p = np.exp(ref_logprobs)
    return np.maximum(_p_log_ratio(p, ref_logprobs, tgt_logprobs).sum(axis=1), 0.0)


def kld_rows_topk(ref_logprobs: np.ndarray, topk_ids: np.ndarray, topk_logprobs: np.ndarray) -> np.ndarray:
    """Per-row KLD(ref || tgt) when the target gives only k distinct ids per row: the k ids plus one "rest" bin.

    Merging outcomes into bins cannot increase KL (data-processing inequality), so this is a LOWER BOUND of
    the full-vocabulary KLD, equal to it when the k ids cover the vocabulary. The target's rest mass
    1 - sum exp(topk_logprobs) can come out <= 0 by rounding; it is floored at REST_MASS_FLOOR (one float32
    ulp of 1), the largest rest mass the dump cannot rule out. p log(p/q) decreases in q, so taking the
    largest plausible q keeps the value a lower bound."""
    topk_logprobs = np.asarray(topk_logprobs, dtype=np.float64)
    ref_in = np.take_along_axis(ref_logprobs, topk_ids, axis=1)
    inside = _p_log_ratio(np.exp(ref_in), ref_in, topk_logprobs).sum(axis=1)
    log_p_rest = log_rest_mass(ref_logprobs, topk_ids)
    q_rest = np.maximum(1.0 - np.exp(topk_logprobs).sum(axis=1), REST_MASS_FLOOR)
    rest = _p_log_ratio(np.exp(log_p_rest), log_p_rest, np.log(q_rest))
    return np.maximum(inside + rest, 0.0)


def top1_agreement_rows(
    ref_logprobs: np.ndarray, tgt_top1: np.ndarray, tie_tolerance: float
) -> tuple[np.ndarray, np.ndarray]:
    """(agree, tie) per row. llama.cpp's "same top p" is `agree`. A tie is a disagreement the reference itself
    cannot call: its log-prob of the target's top-1 is within tie_tolerance nats of its own maximum
    (so the reference's top two are within tie_tolerance, reference.md's tie rule)."""
    rows = np.arange(len(ref_logprobs))
    ref_top1 = ref_logprobs.argmax(axis=1)
    agree = ref_top1 == tgt_top1
    gap = ref_logprobs[rows, ref_top1] - ref_logprobs[rows, tgt_top1]
    return agree, ~agree & (gap <= tie_tolerance)


def top_n_overlap_rows(ref_ids: np.ndarray, tgt_ids: np.ndarray) -> np.ndarray:
    """|top_n_ref ∩ top_n_tgt| / n per row (ids distinct within a row)."""
    shared = (ref_ids[:, :, None] == tgt_ids[:, None, :]).any(axis=2)
    return shared.sum(axis=1) / ref_ids.shape[1]


def delta_p(ref_next_logprobs: np.ndarray, tgt_next_logprobs: np.ndarray) -> np.ndarray:
    """llama.cpp Δp = p_tgt(actual next token) - p_ref(same token); positive when the target is more confident."""
    return np.exp(np.asarray(tgt_next_logprobs, np.float64)) - np.exp(np.asarray(ref_next_logprobs, np.float64))


def rms(values: np.ndarray) -> float | None:
    values = np.asarray(values, dtype=np.float64)
    return float(np.sqrt(np.mean(values**2))) if values.size else None


def perplexity(next_logprobs: np.ndarray) -> float | None:
    """exp(mean negative log-likelihood of the actual next tokens); a uniform model over V tokens gives V."""
    values = np.asarray(next_logprobs, dtype=np.float64)
    return float(np.exp(-values.mean())) if values.size else None


def kld_summary(kld: np.ndarray) -> dict[str, float | None]:
    """llama.cpp's KLD statistics over positions: mean ± standard error, median, 99 %, 99.9 %, max."""
    kld = np.asarray(kld, dtype=np.float64)
    if not kld.size:
        return dict.fromkeys(("mean", "mean_stderr", "median", "p99", "p999", "max"))
    stderr = float(kld.std(ddof=1) / np.sqrt(kld.size)) if kld.size > 1 else None
    median, p99, p999 = np.percentile(kld, [50, 99, 99.9])
    return {
        "mean": float(kld.mean()),
        "mean_stderr": stderr,
        "median": float(median),
        "p99": float(p99),
        "p999": float(p999),
        "max": float(kld.max()),
    }


# ---------------------------------------------------------------- msprobe tensor metrics


def relative_error(npu: np.ndarray, bench: np.ndarray) -> np.ndarray:
    """msprobe get_relative_err: |n - b| / |b|, flattened, float64. Where b == 0 msprobe adds its epsilon
    (float64 eps) to both n and b, so the error there is |n| / eps (0 when n is 0 too)."""
    n = np.asarray(npu, dtype=np.float64).ravel()
    b = np.asarray(bench, dtype=np.float64).ravel()
    zero = b == 0
    n = np.where(zero, n + MSPROBE_EPSILON, n)
    b = np.where(zero, MSPROBE_EPSILON, b)
    return np.abs((n - b) / b)


@dataclass
class TensorStats:
    """Sums behind msprobe's per-tensor metrics. Stats of row chunks add up to the stats of the whole tensor,
    so a [T, V] logit tensor can be compared chunk by chunk in bounded memory."""

    size: int = 0
    dot: float = 0.0
    npu_sq: float = 0.0
    bench_sq: float = 0.0
    max_abs_err: float = 0.0
    max_rel_err: float = 0.0
    below_thousandth: int = 0
    below_five_thousandths: int = 0

    def __add__(self, other: TensorStats) -> TensorStats:
        summed = {f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)}
        summed["max_abs_err"] = max(self.max_abs_err, other.max_abs_err)
        summed["max_rel_err"] = max(self.max_rel_err, other.max_rel_err)
        return TensorStats(**summed)

    @property
    def cosine(self) -> float | None:
        """msprobe GetCosineSimilarity: 1 if both tensors are zero; unavailable if only one is."""
        npu_norm, bench_norm = np.sqrt(self.npu_sq), np.sqrt(self.bench_sq)
        if not self.size or (npu_norm <= MSPROBE_EPSILON) != (bench_norm <= MSPROBE_EPSILON):
            return None
        if npu_norm <= MSPROBE_EPSILON:
            return 1.0
        return float(self.dot / (npu_norm * bench_norm))

    def as_dict(self) -> dict[str, float | None]:
        available = self.size > 0
        return {
            "cosine": self.cosine,
            "max_abs_err": float(self.max_abs_err) if available else None,
            "max_rel_err": float(self.max_rel_err) if available else None,
            "thousandth_err_ratio": self.below_thousandth / self.size if available else None,
            "five_thousandths_err_ratio": self.below_five_thousandths / self.size if available else None,
        }


def tensor_stats(npu: np.ndarray, bench: np.ndarray) -> TensorStats:
    """msprobe's sums for one (chunk of a) tensor pair, flattened in float64; inputs must be finite."""
    n = np.asarray(npu, dtype=np.float64).ravel()
    b = np.asarray(bench, dtype=np.float64).ravel()
    if not n.size:
        return TensorStats()
    rel = relative_error(n, b)
    return TensorStats(
        size=n.size,
        dot=float(n @ b),
        npu_sq=float(n @ n),
        bench_sq=float(b @ b),
        max_abs_err=float(np.abs(n - b).max()),
        max_rel_err=float(rel.max()),
        below_thousandth=int((rel < THOUSANDTH).sum()),
        below_five_thousandths=int((rel < FIVE_THOUSANDTHS).sum()),
    )


def msprobe_metrics(npu: np.ndarray, bench: np.ndarray) -> dict[str, float | None]:
    """cosine, max_abs_err, max_rel_err, thousandth_err_ratio, five_thousandths_err_ratio of one tensor pair."""
    return tensor_stats(npu, bench).as_dict()


def nonfinite_mismatch(npu: np.ndarray, bench: np.ndarray) -> bool:
    """msprobe handle_inf_nan: NaN/inf are tolerated only where both sides have them at the same places."""
    return not (
        np.array_equal(np.isnan(npu), np.isnan(bench)) and np.array_equal(np.isinf(npu), np.isinf(bench))
    )


def msprobe_pass(cosine: float | None, max_abs_err: float | None, nan_inf_mismatch: bool = False) -> bool:
    """msprobe check_accuracy: fail if (cos < 0.99 and MaxAbsErr > 0.001) or cos < 0.9 or MaxAbsErr > 1,
    or NaN/inf positions differ; an uncomputable metric ("N/A" in msprobe) fails too."""
    if nan_inf_mismatch or cosine is None or max_abs_err is None:
        return False
    if not (np.isfinite(cosine) and np.isfinite(max_abs_err)):
        return False
    if cosine < MSPROBE_COS and max_abs_err > MSPROBE_ABS:
        return False
    return not (cosine < MSPROBE_COS_HARD or max_abs_err > MSPROBE_ABS_HARD)
