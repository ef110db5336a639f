"""Performance arithmetic shared by the benchmarks, the serving check and the report. Pure functions, no engine
code: percentiles, per-request latency figures (vLLM's definitions), throughput tables, the roofline and the
consistency checks that make a report's figures check each other.

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


# ---------------------------------------------------------------- prompts


def random_prompts(tokenizer, count: int, length: int, seed: int) -> list[list[int]]:
    """`count` prompts of exactly `length` random token ids (special tokens excluded), reproducible from seed,
    as vLLM's benchmark tools build fixed-length prompts."""
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    vocab = [i for i in range(len(tokenizer)) if i not in special]
    if not vocab:
        raise ValueError("the tokenizer has no ordinary tokens to build benchmark prompts from")
    rng = np.random.default_rng(seed)
    return [[int(vocab[j]) for j in rng.integers(0, len(vocab), size=length)] for _ in range(count)]


# ---------------------------------------------------------------- statistics


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


def throughput_row(batch: int, input_len: int, max_tokens: int, elapsed_s: float) -> dict[str, Any]:
    """One cell of a throughput table: output tokens and total (prompt + output) tokens per second, labelled
    apart (vllm bench throughput's JSON 'tokens_per_second' is the total)."""
    output_tokens = batch * max_tokens
    total_tokens = batch * (input_len + max_tokens)
    return {
        "batch_size": batch, "input_len": input_len, "max_tokens": max_tokens, "elapsed_s": elapsed_s,
        "output_tokens": output_tokens, "total_tokens": total_tokens,
        "output_tok_s": output_tokens / elapsed_s if elapsed_s > 0 else None,
        "total_tok_s": total_tokens / elapsed_s if elapsed_s > 0 else None,
        "requests_s": batch / elapsed_s if elapsed_s > 0 else None,
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


# ---------------------------------------------------------------- roofline


def roofline(weight_bytes: float | None, tpot_s: float | None, hardware: dict | None,
             parameters: float | None = None, prefill_tokens: int | None = None,
             prefill_s: float | None = None) -> dict[str, Any]:
    """Decode floor per step = weight bytes read / peak memory bandwidth (every weight read once per decode
    step; KV cache and recurrent-state reads are left out, so the floor is a lower bound), the achieved TPOT
    and their ratio; prefill FLOPS utilisation = 2 x parameters x prompt tokens / prefill time / peak FLOPS.
    Without a configured bandwidth or FLOPS figure the corresponding results are None: never invented."""
    hardware = hardware or {}
    bandwidth = hardware.get("memory_bandwidth_bytes_s")
    flops = hardware.get("bf16_dense_flops")
    floor = weight_bytes / bandwidth if weight_bytes and bandwidth else None
    ratio = tpot_s / floor if floor and tpot_s else None
    achieved_flops = None
    if parameters and prefill_tokens and prefill_s:
        achieved_flops = 2.0 * parameters * prefill_tokens / prefill_s
    utilisation = achieved_flops / flops if achieved_flops and flops else None
    return {
        "weight_bytes": weight_bytes, "memory_bandwidth_bytes_s": bandwidth, "decode_floor_s": floor,
        "tpot_s": tpot_s, "tpot_over_floor": ratio, "bandwidth_utilisation": 1 / ratio if ratio else None,
        "prefill_achieved_flops": achieved_flops, "bf16_dense_flops": flops, "prefill_flops_utilisation": utilisation,
    }


# ---------------------------------------------------------------- consistency


def _flag(check: str, subject: str, measured: float | None, expected: float | None, tolerance: float,
          relation: str = "≈", note: str = "") -> dict[str, Any]:
    """relation "≈": |measured/expected - 1| <= tolerance; "≤": measured <= expected x (1 + tolerance);
    "≥": measured >= expected x (1 - tolerance). ok None when a figure is missing."""
    ratio = measured / expected if measured is not None and expected else None
    if ratio is None:
        ok = None
    elif relation == "≈":
        ok = abs(ratio - 1) <= tolerance
    elif relation == "≤":
        ok = ratio <= 1 + tolerance
    elif relation == "≥":
        ok = ratio >= 1 - tolerance
    else:
        raise ValueError(f"unknown relation {relation!r}")
    return {"check": check, "subject": subject, "measured": measured, "expected": expected, "relation": relation,
            "ratio": ratio, "tolerance": tolerance, "ok": ok, "note": note}


def consistency_flags(bench: dict, tolerance: float, decode_floor_s: float | None = None) -> list[dict]:
    """Check a target's benchmark figures against each other (a figure that does not fit another means a wrong
    measurement or a wrong definition; the seed's 26.7 tok/s at batch 1 is ~37 ms per token, not 6.2 ms/step):

    1. grid vs latency runs: a throughput cell at the latency runs' batch size and prompt length should take
       TTFT + (max_tokens - 1) x TPOT (the latency runs' medians);
    2. output tok/s at batch B cannot exceed B / TPOT (B tokens per decode step at best);
    3. TTFT against the prefill latency of N prompts: equal when N == B, TTFT >= prefill when N < B;
    4. TPOT cannot beat the decode floor of the roofline (weights read once per step at peak bandwidth).
    """
    flags: list[dict] = []
    latency = bench.get("latency") or {}
    batch, input_len = latency.get("batch_size"), latency.get("input_len")
    ttft = ((latency.get("ttft_s") or {}).get("p50"))
    tpot = ((latency.get("tpot_s") or {}).get("p50"))
    seen = set()
    for table in bench.get("throughput") or []:
        for row in table.get("rows") or []:
            if row.get("batch_size") != batch or row.get("input_len") != input_len:
                continue
            if (row["batch_size"], row["max_tokens"]) in seen:  # a cell shared by two tables: checked once
                continue
            seen.add((row["batch_size"], row["max_tokens"]))
            cell = f"batch {row['batch_size']}, max_tokens {row['max_tokens']}"
            predicted = ttft + (row["max_tokens"] - 1) * tpot if ttft is not None and tpot is not None else None
            flags.append(_flag("grid vs latency runs", cell, row.get("elapsed_s"), predicted, tolerance, "≈",
                               "elapsed vs TTFT p50 + (max_tokens - 1) x TPOT p50"))
            bound = row["batch_size"] / tpot if tpot else None
            flags.append(_flag("output tok/s vs batch / TPOT", cell, row.get("output_tok_s"), bound, tolerance, "≤",
                               "at most batch tokens per decode step"))
    prefill = bench.get("prefill") or {}
    prefill_s = (prefill.get("latency_s") or {}).get("p50")
    prompts = prefill.get("prompts")
    if prefill and latency:
        relation = "≈" if prompts == batch else ("≥" if prompts is not None and batch is not None and prompts < batch
                                                else "≤")
        same_len = prefill.get("input_len") == input_len
        flags.append(_flag("TTFT vs prefill latency", f"TTFT (batch {batch}) vs prefill ({prompts} prompts)",
                           ttft, prefill_s if same_len else None, tolerance, relation,
                           "same prompt length" if same_len else "prompt lengths differ: not comparable"))
    if decode_floor_s is not None or tpot is not None:
        flags.append(_flag("TPOT vs decode floor", f"TPOT p50 (batch {batch})", tpot, decode_floor_s, 0.0, "≥",
                           "a TPOT under the roofline floor means a wrong bandwidth or weight size"
                           if decode_floor_s else "no peak bandwidth configured for this device: floor unknown"))
    return flags
