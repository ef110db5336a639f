"""What every engine provides, on every device. Rows of scores are next-token distributions:
row t is the distribution over the token that follows input_ids[0..t]."""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Any

from ..records import EngineSettings, Generation, PromptScores, item  # noqa: F401 - re-exported for engines


class Engine(abc.ABC):
    def __init__(self, target, model_dir: str | Path, settings: EngineSettings):
        self.target = target
        self.model_dir = Path(model_dir)
        self.settings = settings
        self.timings: dict[str, float] = {}  # e.g. weight_load_s, engine_start_s

    @abc.abstractmethod
    def score(self, prompts: list[list[int]]) -> list[PromptScores]:
        """Teacher-forced scores of every position of each prompt (token ids)."""

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

    @abc.abstractmethod
    def adaptation(self) -> dict[str, Any]:
        """Measured adaptation facts: each item {"value": ..., "status": "ok"|"failed"|"not determined", "note": str}."""

    def close(self) -> None:
        """Release the engine (processes, device memory)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

