"""The one engine abstraction: `make_engine(target, ...)` returns an Engine for hf or vllm on any device."""

from __future__ import annotations

from .base import Engine, EngineSettings, Generation, PromptScores


def make_engine(target, model_dir, settings: EngineSettings) -> Engine:
    if target.engine == "hf":
        from .hf import HFEngine

        return HFEngine(target, model_dir, settings)
    if target.engine == "vllm":
        from .vllm import VLLMEngine

        return VLLMEngine(target, model_dir, settings)
    raise ValueError(f"unknown engine {target.engine!r}")


__all__ = ["Engine", "EngineSettings", "Generation", "PromptScores", "make_engine"]
