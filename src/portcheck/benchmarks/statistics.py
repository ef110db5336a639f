"""Benchmark statistics shared by the offline benchmarks and the serving check. Pure functions, no engine code:
percentiles, per-request latency figures (vLLM's definitions) and throughput tables.

Definitions (as `vllm bench serve` defines them, see reference.md section 3):
- TTFT: time from submitting a request to its first output token.
- TPOT: (E2E - TTFT) / (output tokens - 1): time per output token, the first token excluded.
- ITL: every gap between consecutive output tokens of a request, pooled over requests.
- E2E: time from submitting a request to its last output token.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

import numpy as np

DEFAULT_PERCENTILES = (50, 90, 99)


def stats(values: Iterable[float], percentiles: Sequence[float] = DEFAULT_PERCENTILES) -> dict[str, Any]:
    """{"n", "mean", "min", "max", "p50", "p90", ...} of the finite values (numpy's linear interpolation, as
    vLLM's benchmark tools use); None figures when there is no value."""
    array = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    out: dict[str, Any] = {"n": int(array.size)}
    if array.size == 0:
        out.update({"mean": None, "min": None, "max": None})
        out.update({pkey(p): None for p in percentiles})
        return out
    out.update({"mean": float(array.mean()), "min": float(array.min()), "max": float(array.max())})
    for p in percentiles:
        out[pkey(p)] = float(np.percentile(array, p))
    return out


def pkey(p: float) -> str:
    """50 -> "p50", 99.9 -> "p99.9"."""
    return f"p{p:g}"


def request_latency(token_times: Sequence[float], submitted: float = 0.0) -> dict[str, Any]:
    """TTFT, TPOT, E2E (seconds) and ITL gaps of one request from the times its output tokens arrived.
    Tokens that arrive together (several per step) give zero gaps, as vLLM's ITL counts them."""
    times = [float(t) - submitted for t in token_times]
    if not times:
        return {"ttft": None, "tpot": None, "e2e": None, "itl": [], "output_tokens": 0}
    if any(b < a for a, b in zip(times, times[1:])):
        raise ValueError("token times must not decrease")
    ttft, e2e = times[0], times[-1]
    tpot = (e2e - ttft) / (len(times) - 1) if len(times) > 1 else None
    return {"ttft": ttft, "tpot": tpot, "e2e": e2e, "itl": [b - a for a, b in zip(times, times[1:])],
            "output_tokens": len(times)}


def latency_summary(requests: Sequence[dict], percentiles: Sequence[float] = DEFAULT_PERCENTILES) -> dict[str, Any]:
    """Pooled statistics over request_latency() results: ttft, tpot, e2e per request, itl per gap."""
    return {
        "ttft_s": stats([r["ttft"] for r in requests], percentiles),
        "tpot_s": stats([r["tpot"] for r in requests], percentiles),
        "itl_s": stats([gap for r in requests for gap in r["itl"]], percentiles),
        "e2e_s": stats([r["e2e"] for r in requests], percentiles),
    }


# ---------------------------------------------------------------- throughput


def throughput_row(batch: int, input_len: int, max_tokens: int, elapsed_s: float | None) -> dict[str, Any]:
    """One cell of a throughput table: output tokens and total (prompt + output) tokens per second, labelled
    apart (vllm bench throughput's JSON 'tokens_per_second' is the total). elapsed_s None: not measured."""
    output_tokens = batch * max_tokens
    total_tokens = batch * (input_len + max_tokens)
    measured = elapsed_s is not None and elapsed_s > 0
    return {
        "batch_size": batch, "input_len": input_len, "max_tokens": max_tokens, "elapsed_s": elapsed_s,
        "output_tokens": output_tokens, "total_tokens": total_tokens,
        "output_tok_s": output_tokens / elapsed_s if measured else None,
        "total_tok_s": total_tokens / elapsed_s if measured else None,
        "requests_s": batch / elapsed_s if measured else None,
    }


def add_scaling(rows: list[dict]) -> list[dict]:
    """Speed-up of output tok/s against batch 1 at the same max_tokens and input length, and that speed-up's
    ratio to linear (speed-up / batch). None where the table has no batch-1 row to compare with."""
    base = {(r["max_tokens"], r["input_len"]): r["output_tok_s"] for r in rows if r["batch_size"] == 1}
    for r in rows:
        one = base.get((r["max_tokens"], r["input_len"]))
        if one and r["output_tok_s"] is not None:
            r["speedup_vs_batch1"] = r["output_tok_s"] / one
            r["linear_ratio"] = r["speedup_vs_batch1"] / r["batch_size"]
        else:
            r["speedup_vs_batch1"] = None
            r["linear_ratio"] = None
    return rows
