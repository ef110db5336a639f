"""Row-wise primitives on next-token distributions, shared by the dump stage (compact records, dump/compact.py)
and the compare stage (compare/metrics.py), in float64. A module of its own so that editing the metrics does not
redo the dumps, which only need these."""

from __future__ import annotations

import numpy as np

# A top-k dump's rest mass 1 - sum(exp(topk_logprobs)) is resolved only to about one float32 ulp of 1.
REST_MASS_FLOOR = float(np.finfo(np.float32).eps)
TOP_N = 5


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-probabilities in float64 (max-shifted, so large logits do not overflow)."""
    x = np.asarray(logits, dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        shifted = x - x.max(axis=-1, keepdims=True)
        return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def log_rest_mass(logprobs: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """log of the probability mass outside `ids`, per row; summed directly, not as 1 - sum, to keep tiny
    rest masses exact. -inf when the ids cover the row."""
    outside = logprobs.copy()
    np.put_along_axis(outside, ids, -np.inf, axis=1)
    top = outside.max(axis=1, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore"):
        return (top + np.log(np.exp(outside - top).sum(axis=1, keepdims=True)))[:, 0]


def sort_topk(topk_ids: np.ndarray, topk_logprobs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Top-k ids and log-probs sorted by decreasing log-prob (engines need not return them sorted)."""
    order = np.argsort(-np.asarray(topk_logprobs, dtype=np.float64), axis=1, kind="stable")
    return np.take_along_axis(topk_ids, order, axis=1), np.take_along_axis(topk_logprobs, order, axis=1)


def top_n_ids(logprobs: np.ndarray, n: int = TOP_N) -> np.ndarray:
    """The n (at most V) most likely ids of each row, in no particular order."""
    n = min(n, logprobs.shape[1])
    return np.argpartition(-logprobs, n - 1, axis=1)[:, :n]


def next_token_logprobs(logprobs: np.ndarray, next_ids: np.ndarray) -> np.ndarray:
    """Log-prob of the actual next token for the first len(next_ids) rows (next_ids[t] = input_ids[t+1])."""
    rows = np.arange(len(next_ids))
    return logprobs[rows, next_ids]
