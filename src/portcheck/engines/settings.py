"""The engine settings a target runs with (config.py fills them from the config; engines and the serving
check read them). A plain record: reading or validating a config never imports engine code."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# vLLM's full-vocabulary log-probs (logprobs_topk == -1) come as one Python object per vocabulary id and position;
# above this many per engine call the host runs out of memory long before a forward pass would (extra key
# full_vocab_max_entries overrides it on the vLLM engine).
FULL_VOCAB_MAX_ENTRIES = 20_000_000


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
    in_process: bool | None = None  # vllm: engine core and worker in the caller's process; None = on cpu only
    extra: dict[str, Any] = field(default_factory=dict)
