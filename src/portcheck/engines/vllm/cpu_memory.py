"""How much host RAM a vLLM CPU engine reserves (its `gpu_memory_utilization` is a share of host RAM there), sized
from the checkpoint and max_model_len before the engine starts (issue 8 finding 11).

vLLM's CPU worker reserves total x gpu_memory_utilization; what its process holds after loading and warm-up
("consumed by non-kv usages") comes off that, and the rest is the KV cache, which must hold one max_model_len
sequence. Measured with vLLM CPU 0.32 (its log): the tiny model 0.93 GiB non-KV; a random-weight checkpoint of
Qwen3.5-0.8B's text shape (1.40 GiB of bf16 weights, 248,320-token vocabulary) 3.47 GiB at max_model_len 4,096 and
3.78 GiB at 262,144, i.e. about 1 GiB of runtime plus twice the weights (the weights and the warm-up's activations,
which the full vocabulary makes as large again). KV per token: 2 (K, V) x KV heads x head dim x dtype bytes per
full-attention layer (12,288 B at the real shape; vLLM's own count there: 3.28 GiB for 284,359 tokens, 12.1 KB)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from portcheck.errors import PortcheckError

GIB = 1024**3
RUNTIME_BYTES = 1 * GIB  # the worker process before weights (torch, vLLM, tokenizer): 0.93 GiB measured (tiny)
WEIGHT_FACTOR = 2.0  # weights + the warm-up's activations, ~ as large again at the real vocabulary (measured above)
AUTO_MARGIN = 1.1  # what an unset share is sized with, over the estimate
DEFAULT_SHARE = 0.3  # the share that starts the embedded and the real shape on a 24 GiB host (measured)
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}


@dataclass(frozen=True)
class CpuMemoryNeed:
    weight_bytes: int
    kv_bytes_per_token: int
    max_model_len: int

    @property
    def non_kv_bytes(self) -> int:
        return int(RUNTIME_BYTES + WEIGHT_FACTOR * self.weight_bytes)

    @property
    def total_bytes(self) -> int:
        """The least the engine starts with: its non-KV memory and one max_model_len sequence's KV cache."""
        return self.non_kv_bytes + self.kv_bytes_per_token * self.max_model_len

    def describe(self) -> str:
        return (f"~{self.total_bytes / GIB:.2f} GiB: ~{self.non_kv_bytes / GIB:.2f} GiB before the KV cache (1 GiB of "
                f"runtime + 2 x {self.weight_bytes / GIB:.2f} GiB of weights and warm-up) and "
                f"{self.kv_bytes_per_token * self.max_model_len / GIB:.2f} GiB of KV cache for one "
                f"{self.max_model_len:,}-token sequence")


def memory_need(model_dir: str | Path, dtype: str, max_model_len: int | None) -> CpuMemoryNeed | None:
    """The engine's memory need read from the checkpoint (config.json, safetensors sizes); None where unreadable."""
    model_dir = Path(model_dir)
    try:
        config = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError):
        return None
    text = config.get("text_config", config)
    files = list(model_dir.glob("*.safetensors"))
    if not files or "num_hidden_layers" not in text:
        return None
    layer_types = text.get("layer_types") or ["full_attention"] * text["num_hidden_layers"]
    heads = text.get("num_key_value_heads") or text.get("num_attention_heads") or 0
    head_dim = text.get("head_dim") or text.get("hidden_size", 0) // max(text.get("num_attention_heads") or 1, 1)
    full = sum(kind == "full_attention" for kind in layer_types)
    stored = sum(f.stat().st_size for f in files)  # a bf16 checkpoint: the engine's dtype scales it
    return CpuMemoryNeed(
        weight_bytes=int(stored * DTYPE_BYTES.get(dtype, 2) / 2),
        kv_bytes_per_token=full * 2 * heads * head_dim * DTYPE_BYTES.get(dtype, 2),
        max_model_len=int(max_model_len or text.get("max_position_embeddings") or 0),
    )


def host_memory() -> tuple[int, int]:
    """(total, available) bytes of host RAM."""
    import psutil

    memory = psutil.virtual_memory()
    return memory.total, memory.available


def cpu_memory_share(need: CpuMemoryNeed | None, configured: float | None, total: int, available: int,
                     target: str = "cpu-vllm-bf16") -> float:
    """The share of host RAM to reserve: `configured` when it holds the need and fits what is free, else a clear
    error naming the setting and a value that works; unset: the default share, raised to fit the need, lowered to
    what is free."""
    if need is None:
        return configured or DEFAULT_SHARE
    fits = math.floor(available / total * 20) / 20  # the largest 0.05 step vLLM can reserve now
    wanted = min(1.0, math.ceil(need.total_bytes * AUTO_MARGIN / total * 20) / 20)
    setting = f"targets.{target}.gpu_memory_utilization (on cpu: the share of host RAM vLLM reserves)"
    if configured is None:
        share = max(DEFAULT_SHARE, wanted)
        if share > fits and fits * total >= need.total_bytes:
            share = fits
    else:
        share = configured
    if share * total < need.total_bytes:
        raise PortcheckError(
            f"{setting} {share} reserves {share * total / GIB:.2f} GiB of this host's {total / GIB:.2f} GiB, but the "
            f"engine needs {need.describe()}; set it to {wanted}"
            + (f" (free now: {available / GIB:.2f} GiB)" if wanted > fits else "")
            + " or lower max_model_len"
        )
    if share * total > available:
        room = max(0, int(fits * total) - need.non_kv_bytes) // max(need.kv_bytes_per_token, 1) // 1024 * 1024
        raise PortcheckError(
            f"{setting} {share} would reserve {share * total / GIB:.2f} GiB but {available / GIB:.2f} GiB of this "
            f"host's {total / GIB:.2f} GiB is free, and vLLM refuses to start; "
            + (f"set it to {fits}" if fits * total >= need.total_bytes else
               f"lower max_model_len to {room:,} or less (the engine needs {need.describe()})")
            + ", or free memory (other engines running?)"
        )
    return share
