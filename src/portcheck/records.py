"""Plain records shared by the engines, the dump format and the config: no engine code, so modules that
only read or write artifacts do not depend on (and are not rerun for edits to) the engines."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class EngineSettings:
    threads: int | None = None
    seed: int = 0
    trust_remote_code: bool = False
    max_model_len: int | None = None
    enforce_eager: bool = True
    gpu_memory_utilization: float | None = None
    max_num_batched_tokens: int | None = None
    max_num_seqs: int | None = None
    language_model_only: bool = True
    logprobs_topk: int = 20  # vllm: how many prompt logprobs per position; -1 = full vocabulary
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class PromptScores:
    """Scores of one teacher-forced prompt: full logits, or top-k log-probs (vLLM)."""

    input_ids: np.ndarray  # int64 [T]
    logits: np.ndarray | None = None  # float32 [T, V]
    topk_ids: np.ndarray | None = None  # int64 [T, k]
    topk_logprobs: np.ndarray | None = None  # float32 [T, k]
    # log-prob of the actual next token input_ids[t+1] at row t; the last row has none (NaN)
    token_logprobs: np.ndarray | None = None  # float32 [T]


@dataclass
class Generation:
    token_ids: list[int]
    logprobs: list[float] | None = None  # log-prob of each chosen token, where the engine gives it


def item(value: Any, status: str, note: str = "") -> dict[str, Any]:
    """One adaptation check: a measured value and ok / failed / not determined."""
    return {"value": value, "status": status, "note": note}
