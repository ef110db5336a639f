"""What engines return: teacher-forced scores, generations (also timed), and adaptation check items.
Plain records with no engine code, so the dump format that stores them does not depend on the engines."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class PromptScores:
    """Scores of one teacher-forced prompt: full logits, top-k log-probs (vLLM), or compact records (top-k plus
    rest_logmass and, optionally, sample_logprobs: dump/compact.py)."""

    input_ids: np.ndarray  # int64 [T]
    logits: np.ndarray | None = None  # float32 [T, V]
    topk_ids: np.ndarray | None = None  # int64 [T, k]
    topk_logprobs: np.ndarray | None = None  # float32 [T, k]
    # log-prob of the actual next token input_ids[t+1] at row t; the last row has none (NaN)
    token_logprobs: np.ndarray | None = None  # float32 [T]
    rest_logmass: np.ndarray | None = None  # float32 [T]: log of the mass outside the top-k
    sample_logprobs: np.ndarray | None = None  # float32 [T, s]: log-probs at the dump's sample_ids


@dataclass
class DecodeScores:
    """A greedy decode with the distribution of every step. scores.input_ids are the tokens each step follows
    ([last prompt token] + tokens[:-1]) so that, as in teacher-forced scores, row t's next token is tokens[t]."""

    prompt: list[int]
    tokens: list[int]
    scores: PromptScores


def decode_row_ids(prompt: list[int], tokens: list[int]) -> list[int]:
    """The token each decode step follows: the last prompt token, then every decoded token but the last."""
    return [int(prompt[-1]), *(int(t) for t in tokens[:-1])]


@dataclass
class Generation:
    token_ids: list[int]
    logprobs: list[float] | None = None  # log-prob of each chosen token, where the engine gives it


def item(value: Any, status: str, note: str = "") -> dict[str, Any]:
    """One adaptation check: a measured value and ok / failed / not determined."""
    return {"value": value, "status": status, "note": note}


@dataclass
class TimedGeneration:
    token_ids: list[int]
    token_times: list[float]  # seconds since the batch was submitted, one per output token


@dataclass
class LayerStates:
    """Per-layer capture of a few sequences (where a target diverges). hidden: per sequence [L + 1, T, H] float32,
    the output of each captured decoder layer (`indices`) and, last, of the final norm; None with `status` ("not
    run" / "not determined") and `reason`. gdn_states: per sequence [G, heads, key dim, value dim] float32, the
    recurrent state each Gated DeltaNet layer of `gdn_layers` holds after the sequence, where the engine exposes
    it (`gdn_reason` says why not), with the dtype the engine keeps it in."""

    hidden: list[np.ndarray] | None
    indices: list[int] | None = None
    status: str = "ok"
    reason: str = ""
    gdn_states: list[np.ndarray] | None = None
    gdn_layers: list[int] | None = None
    gdn_state_dtype: str | None = None
    gdn_reason: str = ""


@dataclass
class VisionScores:
    """One image prompt through the whole model: `scores` holds the text rows after the last image; `blocks` each
    vision block's output [patches, H], `merger` the merged image tokens [tokens, text H], `position_ids` the
    multimodal rotary ids the language model received [3, 1, T] (None where not seen), `encode_seconds` the vision
    tower's time, `input_ids` the whole prompt as the engine laid it out (None: as given)."""

    scores: PromptScores
    blocks: list[np.ndarray]
    merger: np.ndarray | None
    position_ids: np.ndarray | None
    encode_seconds: float
    input_ids: list[int] | None = None  # the ids the engine ran, where it lays out the image tokens itself (vLLM)
    first_token_seconds: float | None = None  # the prompt run again without the capture: pixels to first token


def vision_arrays(prompts) -> dict[str, np.ndarray]:
    """The tensors of a vision-blocks file from (blocks, merger, positions or None) per prompt: `block.<p>` float32
    [blocks, patches, H], `merger.<p>` float32, `positions.<p>` int64 [3, T]. Written by the worker's capture and
    the dump alike; vision_tensors reads them back."""
    tensors = {}
    for p, (blocks, merger, positions) in enumerate(prompts):
        tensors[f"block.{p}"] = np.ascontiguousarray(np.stack(blocks), dtype=np.float32)
        tensors[f"merger.{p}"] = np.ascontiguousarray(merger, dtype=np.float32)
        if positions is not None:
            tensors[f"positions.{p}"] = np.ascontiguousarray(np.reshape(positions, (3, -1)), dtype=np.int64)
    return tensors


def vision_tensors(f, prompts: int) -> list[dict]:
    """Per prompt p of a vision-blocks safetensors file (an open safe_open handle): `block.<p>` [blocks, patches,
    H], `merger.<p>` and `positions.<p>` (None where absent). Shared by the worker's file and the dump's."""
    names = set(f.keys())
    return [{"blocks": f.get_tensor(f"block.{p}"), "merger": f.get_tensor(f"merger.{p}"),
             "positions": f.get_tensor(f"positions.{p}") if f"positions.{p}" in names else None}
            for p in range(prompts)]
