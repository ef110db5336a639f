"""Cross-checks of one target's benchmark figures against each other: a figure that does not fit another means a
wrong measurement or a wrong definition."""

from __future__ import annotations

from typing import Any


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
            if row.get("batch_size") != batch or row.get("input_len") != input_len or row.get("skipped"):
                continue  # another batch or prompt length, or a cell skipped over the budget: nothing measured
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
