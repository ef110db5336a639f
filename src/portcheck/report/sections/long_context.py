"""Section Long-context precision: each target's corpus windows against the reference by position bucket
(compare/<target>.corpus.json), the growth of KLD past the first Gated DeltaNet chunk, and the bf16 noise floor
(cpu-hf-bf16's KLD in the same bucket) where that target ran."""

from __future__ import annotations

from portcheck.report.format import NOT_RUN, UNKNOWN, VERDICT_LABEL, num, pct, sci, table
from portcheck.report.load import TargetData
from portcheck.report.sources import cite

# The bf16 noise floor: the same model in bf16 on the reference's own engine and device.
FLOOR_TARGET = "cpu-hf-bf16"
BUCKET_COLUMNS = ("Positions", "n", "KLD mean ± stderr", "KLD p99", "× bf16 floor", "Top-1 (ties as agreement)",
                  "RMS Δp", "PPL ref", "PPL target", "Status")


def long_context_section(targets: list[TargetData]) -> dict:
    compared = [t for t in targets if t.role == "target"]
    disabled = compared and all("corpus_compare" in t.absent and "not configured" in t.absent["corpus_compare"]
                                for t in compared)
    floor = next((t for t in compared if t.name == FLOOR_TARGET and t.corpus_compare), None)
    return {"enabled": not disabled, "floor_target": FLOOR_TARGET if floor else None,
            "targets": [] if disabled else [_target(t, floor) for t in compared],
            "method": _method(next((t.corpus_compare for t in compared if t.corpus_compare), None))}


def corpus_status(data: TargetData) -> str | None:
    """pass / fail / unknown for a compared target; None where the corpus is not configured."""
    absent = data.absent.get("corpus_compare", "")
    if "not configured" in absent:
        return None
    if data.corpus_compare is None:
        return NOT_RUN
    status = (data.corpus_compare.get("verdict") or {}).get("status")
    return status if status in ("pass", "fail") else UNKNOWN


def _target(data: TargetData, floor_data: TargetData | None) -> dict:
    c = data.corpus_compare
    if c is None:
        return {"target": data.name, "available": False, "reason": data.absent.get("corpus_compare", NOT_RUN)}
    path = data.paths["corpus_compare"]
    verdict = c.get("verdict") or {}
    floor = floor_data.corpus_compare if floor_data else None
    floor_by_start = {b["start"]: b.get("kld_mean") for b in (floor or {}).get("buckets") or []}
    is_floor = data.name == FLOOR_TARGET
    rows = [_bucket_row(b, floor_by_start.get(b["start"]), is_floor) for b in c.get("buckets") or []]
    overall = c.get("overall") or {}
    rows.append(_bucket_row({**overall, "start": "all", "end": None, "status": verdict.get("status")},
                            ((floor or {}).get("overall") or {}).get("kld_mean"), is_floor))
    growth = c.get("growth") or {}
    source = cite(path, "buckets", "overall", "verdict")
    if floor_data:
        source += f"; × bf16 floor: {cite(floor_data.paths['corpus_compare'], 'buckets.kld_mean', 'overall.kld_mean')}"
    return {
        "target": data.name, "available": True,
        "verdict": VERDICT_LABEL.get(corpus_status(data), UNKNOWN),
        "reasons": list(verdict.get("reasons") or []), "notes": list(verdict.get("notes") or []),
        "lower_bound": bool(c.get("kld_is_lower_bound")),
        "buckets": table(list(BUCKET_COLUMNS), rows, source),
        "growth": table(["First bucket", "KLD there", "KLD after it", "Ratio", "95% lower bound", "Allowed",
                         "Status"],
                        [[growth.get("first_bucket", "—"), sci(growth.get("kld_first")), sci(growth.get("kld_later")),
                          _ratio(growth.get("ratio"), growth), _ratio(growth.get("ratio_lower95"), growth),
                          f"{num(growth.get('growth_max'))}x above {sci(growth.get('growth_floor'))}",
                          VERDICT_LABEL.get(growth.get("status"), UNKNOWN)]],
                        cite(path, "growth")),
        "growth_reason": growth.get("reason", ""),
    }


def _bucket_row(bucket: dict, floor_kld: float | None, is_floor: bool) -> list[str]:
    start, end = bucket.get("start"), bucket.get("end")
    kld = bucket.get("kld_mean")
    stderr = bucket.get("kld_mean_stderr")
    times_floor = "the floor" if is_floor else "—" if not floor_kld or kld is None else f"{kld / floor_kld:.2f}"
    return [
        "all" if start == "all" else f"{start}-{end}", str(bucket.get("n_positions", "—")),
        f"{sci(kld)} ± {sci(stderr)}" if stderr is not None else sci(kld), sci(bucket.get("kld_p99")), times_floor,
        pct(bucket.get("top1_agreement_with_ties")), pct(bucket.get("rms_delta_p")), num(bucket.get("ppl_ref")),
        num(bucket.get("ppl_target")), VERDICT_LABEL.get(bucket.get("status"), UNKNOWN),
    ]


def _ratio(value, growth: dict) -> str:
    if value is None:
        return "∞ (first bucket exact)" if growth.get("first_bucket_exact") and growth.get("kld_later") else "—"
    return f"{value:.3g}x"


def _method(c: dict | None) -> dict:
    if not c:
        return {}
    corpus = c.get("corpus") or {}
    return {"text": corpus.get("path", UNKNOWN), "sha256": (corpus.get("sha256") or "")[:12],
            "windows": c.get("windows"), "window_length": c.get("window_length"), "score_from": c.get("score_from"),
            "bucket": c.get("bucket"), "positions": (c.get("overall") or {}).get("n_positions")}
