"""What a pass is worth: the checks' detection table that `make calibrate` measured (a record shipped with
portcheck, not this run's): each injected fault class, its size as a multiple of the bf16 floor, the checks that
caught it, and the clean runs' false failures."""

from __future__ import annotations

from portcheck.faults.catalog import caught_text
from portcheck.report.format import UNKNOWN, table
from portcheck.report.sources import shipped_record

# make calibrate --ship writes it (scripts/calibrate.py).
DETECTION_RECORD = ("portcheck.faults", "data/detection.json")
KINDS = ("corpus", "decode", "chunked", "batch")


def power_section() -> dict:
    record, path = shipped_record(*DETECTION_RECORD)
    if not record:
        return {"available": False}
    rows = []
    for row in record.get("detection") or []:
        multiples = row.get("floor_multiple") or {}
        rows.append([f"`{row['fault']}`", row.get("what", UNKNOWN), *(_multiple(multiples.get(k)) for k in KINDS),
                     caught_text(row)])
    clean = [[check, f"{counts['failed']} of {counts['runs']}", str(counts["inconclusive"])]
             for check, counts in (record.get("false_failures") or {}).items()]
    source = f"{path} (make calibrate, {record.get('date', UNKNOWN)}: {record.get('model', UNKNOWN)}, " \
             f"{record.get('target', UNKNOWN)} against {record.get('reference', UNKNOWN)})"
    host = record.get("host")
    missed = [row["fault"] for row in record.get("detection") or [] if row.get("should_be_caught") and not row["caught"]]
    return {
        "available": True,
        "faults": table(["Injected fault", "Port bug it stands for", *(f"KLD / floor, {k}" for k in KINDS),
                         "Caught by"], rows, source + ": detection"),
        "clean": table(["Check", "False failures", "Inconclusive"], clean, source + ": false_failures"),
        "missed": missed,
        "host": host_text(host) if host else None,  # None: a record written before make calibrate kept its host
    }


def host_text(host: dict) -> str:
    """'<cpu> (<float kernel flags>), torch <v>, vllm <v>': what decides how this host's float kernels round."""
    flags = host.get("float_kernel_flags")
    flags_text = ", ".join(flags) if flags else ("none of the AVX2/AVX-512/AMX flags" if flags == [] else UNKNOWN)
    return f"{host.get('cpu') or UNKNOWN} ({flags_text}), torch {host.get('torch') or UNKNOWN}, " \
           f"vllm {host.get('vllm') or UNKNOWN}"


def _multiple(value) -> str:
    return "—" if value is None else f"{value:.1f}×"

