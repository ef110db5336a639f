"""The one engine abstraction: `make_engine(target, ...)` returns an Engine for hf or vllm on any device."""

from __future__ import annotations

from portcheck.engines.base import Engine
from portcheck.engines.settings import EngineSettings


def make_engine(target, model_dir, settings: EngineSettings) -> Engine:
    if target.engine == "hf":
        from portcheck.engines.hf import HFEngine

        return HFEngine(target, model_dir, settings)
    if target.engine == "vllm":
        from portcheck.engines.vllm.engine import VLLMEngine

        return VLLMEngine(target, model_dir, settings)
    raise ValueError(f"unknown engine {target.engine!r}")

