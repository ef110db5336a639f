"""How much host RAM a vLLM CPU engine reserves (its `gpu_memory_utilization` is a share of host RAM there), sized
from the checkpoint and max_model_len before the engine starts (issue 8 finding 11).

vLLM's CPU worker reserves total x gpu_memory_utilization; what its process holds after loading and warm-up
("consumed by non-kv usages") comes off that, and the rest is the KV cache, which must hold one max_model_len
sequence. Measured with vLLM CPU 0.32 (its log): the tiny model 0.93 GiB non-KV; a random-weight checkpoint of
Qwen3.5-0.8B's text shape (1.40 GiB of bf16 weights, 248,320-token vocabulary) 3.47 GiB at max_model_len 4,096 and
3.78 GiB at 262,144, i.e. about 1 GiB of runtime plus twice the weights (the weights and the warm-up's activations,
which the full vocabulary makes as large again). KV per token: 2 (K, V) x KV heads x head dim x dtype bytes per
full-attention layer (12,288 B at the real shape; vLLM's own count there: 3.28 GiB for 284,359 tokens, 12.1 KB).

An unset share also sizes the KV cache explicitly (kv_cache_bytes) where the share would reserve more than the
engine can use: vLLM allocates and zeroes the whole budget at each start (the tiny model's 6 GiB: vLLM's engine init
5.6-6.9 s here; 512 MiB: 0.06-0.13 s) and its scheduler never holds more than max_num_seqs sequences."""

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
SSM_STATE_BYTES = 4  # vLLM CPU's GDN backend holds the recurrent state in fp32 (tests/test_vllm_engine.py reads it)
CPU_MAX_NUM_SEQS = 256  # vLLM's max_num_seqs default on cpu for the offline engine (the server's: 128)
# vLLM pads the GDN state pages to the attention page size (by 86.9% at the tiny shape, its log): 2 x the estimate.
KV_PAGE_FACTOR = 2.0
MIN_KV_BYTES = 512 * 1024**2  # a floor: the tiny model's estimate is ~0.3 GiB and vLLM rounds blocks up


@dataclass(frozen=True)
class CpuMemoryNeed:
    weight_bytes: int
    kv_bytes_per_token: int
    max_model_len: int
    state_bytes_per_sequence: int = 0  # the linear-attention (GDN) layers' recurrent and conv state

    def kv_bytes_for(self, sequences: int) -> int:
        """The KV cache `sequences` sequences of max_model_len need, vLLM's page padding included (estimate)."""
        per_sequence = self.kv_bytes_per_token * self.max_model_len + self.state_bytes_per_sequence
        return int(KV_PAGE_FACTOR * sequences * per_sequence)

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
    dtype_bytes = DTYPE_BYTES.get(dtype, 2)
    return CpuMemoryNeed(
        weight_bytes=int(stored * dtype_bytes / 2),
        kv_bytes_per_token=full * 2 * heads * head_dim * dtype_bytes,
        max_model_len=int(max_model_len or text.get("max_position_embeddings") or 0),
        state_bytes_per_sequence=_state_bytes(text, layer_types, dtype_bytes),
    )


def _state_bytes(text: dict, layer_types: list[str], dtype_bytes: int) -> int:
    """One sequence's Gated DeltaNet state over the linear-attention layers: the recurrent state (value heads x key
    dim x value dim, fp32) and the short convolution's (q, k and v channels x kernel - 1, model dtype)."""
    key_heads, value_heads = text.get("linear_num_key_heads") or 0, text.get("linear_num_value_heads") or 0
    key_dim, value_dim = text.get("linear_key_head_dim") or 0, text.get("linear_value_head_dim") or 0
    recurrent = value_heads * key_dim * value_dim * SSM_STATE_BYTES
    conv = (2 * key_heads * key_dim + value_heads * value_dim) * max((text.get("linear_conv_kernel_dim") or 1) - 1, 0)
    return sum(kind == "linear_attention" for kind in layer_types) * (recurrent + conv * dtype_bytes)


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


def kv_cache_bytes(need: CpuMemoryNeed | None, share: float, total: int, max_num_seqs: int | None) -> int | None:
    """An explicit KV cache for an unset share: what max_num_seqs sequences of max_model_len need (at least
    MIN_KV_BYTES), where that is less than the share leaves after the engine's other memory; None otherwise, and
    vLLM sizes the KV cache from the share (the real shape at the default settings)."""
    if need is None:
        return None
    wanted = max(MIN_KV_BYTES, need.kv_bytes_for(max_num_seqs or CPU_MAX_NUM_SEQS))
    return wanted if wanted < share * total - need.non_kv_bytes else None
