"""Figures derived from one target's bench.json: the roofline (against the configured hardware peaks) and the
cross-checks of its figures against each other. Stored in bench_checks.json so the report only formats them,
and a changed peak or tolerance reruns this cheap step, not the benchmarks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from portcheck.artifacts import read_artifact
from portcheck.atomic import write_json
from portcheck.benchmarks.cross_checks import consistency_flags
from portcheck.benchmarks.roofline import roofline

SCHEMA_VERSION = 1


def check_benchmarks(bench: dict, hardware_name: str | None, hardware: dict | None, tolerance: float) -> dict[str, Any]:
    """hardware: the config's hardware entry named by the target (None: not configured or not in the table)."""
    latency, prefill = bench.get("latency") or {}, bench.get("prefill") or {}
    weights = (bench.get("memory") or {}).get("weights") or {}
    prefill_tokens = (prefill.get("prompts") or 0) * (prefill.get("input_len") or 0)
    roof = roofline(weights.get("bytes"), (latency.get("tpot_s") or {}).get("p50"), hardware,
                    weights.get("parameters"), prefill_tokens, (prefill.get("latency_s") or {}).get("p50"))
    return {
        "schema_version": SCHEMA_VERSION,
        "target": bench.get("target"),
        "hardware": {"name": hardware_name, "peaks": hardware},
        "roofline": {**roof, "prefill_prompts": prefill.get("prompts"), "prefill_input_len": prefill.get("input_len")},
        "tolerance": tolerance,
        "consistency": consistency_flags(bench, tolerance, roof["decode_floor_s"]),
    }


def write_bench_checks(bench_path: str | Path, out_path: str | Path, hardware_name: str | None,
                       hardware: dict | None, tolerance: float) -> None:
    write_json(out_path, check_benchmarks(read_artifact(bench_path, "bench"), hardware_name, hardware, tolerance))
