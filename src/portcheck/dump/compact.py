"""Compact per-position records: what a dump keeps of a next-token distribution when the vocabulary is too large
to store whole (Qwen3.5: 248,320 ids, ~1 MB per position as float32). compare/compact.py computes the KLD of two.

A record holds, per position (row):
- the k most likely ids and their log-probs (by decreasing log-prob),
- the log of the probability mass outside them (exact where the engine had the whole row; 1 - sum for vLLM),
- the log-probs at a shared sample of ids: the same `sample_ids` in every dump (drawn once from a fixed seed over
  the vocabulary), so two records can be compared on ids neither would have chosen (engines with whole rows, and
  vLLM's worker: engines/vllm/worker_logits.py).
At k = 256 and 128 sample ids that is 256 x 8 + 128 x 4 + 8 = 2,568 bytes per position, whatever the vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from portcheck import logprobs as m
from portcheck.engines.outputs import PromptScores
from portcheck.errors import PortcheckError

DEFAULT_SEED = 0
STORAGE_CHOICES = ("auto", "full", "compact")


@dataclass(frozen=True)
class Storage:
    """How score rows are stored: whole (compact False) or as compact records of `topk` ids and `sample` ids."""

    compact: bool = False
    topk: int = 256
    sample: int = 128

    @classmethod
    def from_config(cls, logits: dict[str, Any], vocab: int | None) -> Storage:
        """The config's `logits` section: storage auto | full | compact; auto is compact above full_max_vocab ids."""
        choice = logits.get("storage", "auto")
        if choice not in STORAGE_CHOICES:
            raise PortcheckError(f"logits.storage is {choice!r}; use one of {', '.join(STORAGE_CHOICES)}")
        compact = choice == "compact" or (choice == "auto" and vocab is not None
                                          and vocab > int(logits.get("full_max_vocab", 32768)))
        return cls(compact, int(logits.get("compact_topk", 256)), int(logits.get("compact_sample", 128)))


@dataclass
class CompactRows:
    """Compact records of T rows. sample_logprobs is None where the engine gave only its top-k."""

    topk_ids: np.ndarray  # int64 [T, k], by decreasing log-prob
    topk_logprobs: np.ndarray  # float64 [T, k]
    rest_logmass: np.ndarray  # float64 [T]: log of the mass outside topk_ids (-inf: they cover the row)
    sample_logprobs: np.ndarray | None = None  # float64 [T, s] at sample_ids
    sample_ids: np.ndarray | None = None  # int64 [s]

    def __len__(self) -> int:
        return len(self.topk_ids)

    def rows(self, part: slice) -> CompactRows:
        sample = None if self.sample_logprobs is None else self.sample_logprobs[part]
        return CompactRows(self.topk_ids[part], self.topk_logprobs[part], self.rest_logmass[part], sample,
                           self.sample_ids)


def sample_ids(vocab: int, count: int, seed: int = DEFAULT_SEED) -> np.ndarray:
    """The shared sample: `count` distinct ids of [0, vocab), sorted, the same for every dump of one vocabulary."""
    count = min(count, vocab)
    return np.sort(np.random.default_rng(seed).choice(vocab, size=count, replace=False)).astype(np.int64)


def bytes_per_position(topk: int, sample: int) -> int:
    """Stored bytes of one position: int32 ids + float32 log-probs of the top-k, float32 sample log-probs, the
    float32 rest mass and the float32 log-prob of the actual next token."""
    return topk * 8 + sample * 4 + 8


def reduce_logprobs(logprobs: np.ndarray, topk: int, sample: np.ndarray | None) -> CompactRows:
    """The compact record of whole rows of log-probs [T, V]."""
    logprobs = np.asarray(logprobs, dtype=np.float64)
    k = min(topk, logprobs.shape[1])
    ids = m.top_n_ids(logprobs, k)
    ids, top = m.sort_topk(ids, np.take_along_axis(logprobs, ids, axis=1))
    rest = m.log_rest_mass(logprobs, ids)
    sampled = None if sample is None else logprobs[:, sample]
    return CompactRows(ids.astype(np.int64), top, rest, sampled, None if sample is None else np.asarray(sample))


def from_topk(topk_ids: np.ndarray, topk_logprobs: np.ndarray) -> CompactRows:
    """The record of a top-k-only engine (vLLM): the rest mass is 1 - sum, floored as in metrics.kld_rows_topk."""
    ids, logprobs = m.sort_topk(np.asarray(topk_ids, np.int64), np.asarray(topk_logprobs, np.float64))
    with np.errstate(divide="ignore"):
        rest = np.log(np.maximum(1.0 - np.exp(logprobs).sum(axis=1), m.REST_MASS_FLOOR))
    return CompactRows(ids, logprobs, rest)




def compact_scores(scores: PromptScores, storage: Storage, sample: np.ndarray | None) -> PromptScores:
    """One prompt's whole rows (logits or log-probs [T, V]) as compact records; other scores pass unchanged."""
    if not storage.compact or scores.logits is None:
        return scores
    logprobs = m.log_softmax(scores.logits)
    record = reduce_logprobs(logprobs, storage.topk, sample)
    ids = np.asarray(scores.input_ids)
    token = np.full(len(ids), np.nan)
    token[:-1] = m.next_token_logprobs(logprobs, ids[1:])
    return PromptScores(input_ids=ids, topk_ids=record.topk_ids, topk_logprobs=record.topk_logprobs,
                        token_logprobs=token, rest_logmass=record.rest_logmass, sample_logprobs=record.sample_logprobs)
