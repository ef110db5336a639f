"""The roofline of one target (theory, from configured hardware peaks; never invented): the decode floor a
TPOT cannot beat and the prefill FLOPS utilisation."""

from __future__ import annotations

from typing import Any


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
