"""What every engine provides, on every device. Rows of scores are next-token distributions:
row t is the distribution over the token that follows input_ids[0..t]."""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from portcheck.errors import PortcheckError
from portcheck.engines.outputs import DecodeScores, Generation, LayerStates, PromptScores, TimedGeneration
from portcheck.engines.settings import EngineSettings


class Engine(abc.ABC):
    # What the last call's full-vocabulary PromptScores.logits hold: raw "logits", or "logprobs" (vLLM's own, where
    # its worker cannot make rows); rows_fallback: why the last call's rows are not the model's own logits ("").
    full_values = "logits"
    rows_fallback = ""

    def __init__(self, target, model_dir: str | Path, settings: EngineSettings):
        self.target = target
        self.model_dir = Path(model_dir)
        self.settings = settings
        self.timings: dict[str, float] = {}  # e.g. weight_load_s, engine_start_s

    @abc.abstractmethod
    def score(self, prompts: list[list[int]]) -> list[PromptScores]:
        """Teacher-forced scores of every position of each prompt (token ids)."""

    def last_logits(self, prompts: list[list[int]]) -> np.ndarray:
        """The logits after the last token of each prompt, one row per prompt (engines that can batch prompts of
        one length and skip the other positions' vocabulary projection do so)."""
        return np.stack([scores.logits[-1] for scores in self.score(prompts)])

    @abc.abstractmethod
    def generate(
        self,
        prompts: list[list[int]],
        max_new_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> list[Generation]:
        """Continuations of a batch of prompts; temperature 0 is greedy."""

    decode_batches: list[int] = []  # the sizes of the batches the last decode ran its prompts in, in order

    @abc.abstractmethod
    def decode(self, prompts: list[list[int]], max_new_tokens: int, together: bool = False,
               compact: tuple[int, list[int]] | None = None, alone: bool = False,
               mixed_batch: bool = False) -> list[DecodeScores]:
        """Greedy continuations through the engine's decode path, with every step's distribution (what the decode
        kernels computed), for the reference to score teacher-forced. together: all prompts in one batch, whatever
        the engine would otherwise do (the batch mode); engines that decode one prompt at a time ignore it. alone:
        each prompt alone, where the engine would batch them (decode.batched or modes.batched false: as requests
        served one at a time). mixed_batch: one batch however the engine schedules it (prefills split across
        passes by chunked prefill, prefixes read from the cache), where it would otherwise decode each prompt alone
        (the mode workload, decoded so in the base configuration and in each mode run alike); engines that batch
        by memory ignore it.
        compact: (top-k, sample ids) where the dump keeps compact records, for engines that make them themselves
        (vLLM's worker); engines returning whole rows ignore it (the dump writer reduces them)."""

    def layer_states(self, prompts: list[list[int]], indices: list[int] | None = None) -> LayerStates:
        """Per prompt the output of each decoder layer in `indices` (None: all) and of the final norm, and each
        captured Gated DeltaNet layer's recurrent state after the prompt (outputs.LayerStates). Engines that
        cannot capture them say so."""
        return LayerStates(None, status="not run",
                           reason=f"the {self.target.engine} engine does not capture per-layer hidden states")

    @abc.abstractmethod
    def adaptation(self) -> dict[str, Any]:
        """Measured adaptation facts: each item {"value": ..., "status": "ok"|"failed"|"not determined", "note": str}."""

    # -- benchmarking (bench.py): one timing code path for every engine and device --------------------------

    def timed_generate(
        self, prompts: list[list[int]], max_new_tokens: int, temperature: float = 0.0, seed: int | None = None,
    ) -> tuple[float, list["TimedGeneration"]]:
        """Generate exactly max_new_tokens per prompt as one batch; return the wall time (s) of the whole batch
        and, per prompt, the time (s since the batch was submitted) at which each output token arrived."""
        raise NotImplementedError(f"{type(self).__name__} has no timed generation")

    def weight_bytes(self) -> dict[str, Any]:
        """{"bytes", "parameters", "source"} of the weights this engine holds."""
        return {"bytes": None, "parameters": None, "source": "not determined"}

    def peak_memory(self) -> dict[str, Any]:
        """{"bytes", "source"}: peak device memory (torch's counters on cuda/npu, peak RSS on cpu)."""
        return {"bytes": None, "source": "not determined"}

    def capacity(self) -> dict[str, Any]:
        """KV cache capacity (tokens) and maximum concurrency where the engine has fixed ones (vllm)."""
        return {"kv_cache_tokens": None, "max_concurrency": None, "note": "no fixed KV cache in this engine"}

    def close(self) -> None:
        """Release the engine (processes, device memory)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()



DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8, "int8": 1, "uint8": 1,
               "float8_e4m3fn": 1, "float8_e5m2": 1, "int32": 4, "int64": 8}


def check_prompt_lengths(
    prompts_ids: Sequence[Sequence[int]],
    max_model_len: int | None,
    names: Sequence[str] | None = None,
    new_tokens: int = 1,
) -> None:
    """Reject, naming the prompt, any prompt vLLM would refuse or cut: empty, or prompt + new_tokens > max_model_len.

    vLLM rejects a prompt whose length reaches max_model_len (it needs room for >= 1 output token), so scoring
    needs len + 1 <= max_model_len and generating n tokens len + n. `names` label the prompts in the message
    (default: their index). Call it before make_engine: an engine start costs a minute or more.
    """
    names = list(names) if names is not None else [f"#{i}" for i in range(len(prompts_ids))]
    if len(names) != len(prompts_ids):
        raise ValueError(f"{len(names)} names for {len(prompts_ids)} prompts")
    for index, (name, ids) in enumerate(zip(names, prompts_ids)):
        if len(ids) == 0:
            raise PortcheckError(f"prompt {index} ({_short(name)}) has no tokens; remove it")
        if max_model_len and len(ids) + new_tokens > max_model_len:
            raise PortcheckError(
                f"prompt {index} ({_short(name)}) has {len(ids)} tokens; with {new_tokens} new token(s) it needs "
                f"{len(ids) + new_tokens} > max_model_len {max_model_len}; shorten the prompt or raise max_model_len"
            )


def _short(name: Any, width: int = 60) -> str:
    text = str(name)
    return repr(text if len(text) <= width else text[: width - 3] + "...")
