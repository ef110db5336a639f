"""Sections Long-context precision and Decode-path precision: each target against the reference by bucket of
positions (corpus windows: compare/<target>.corpus.json; decode steps: compare/<target>.decode.json), the growth of
KLD past the first bucket (one Gated DeltaNet chunk), and the bf16 noise floor (cpu-hf-bf16's KLD in the same
bucket on the same windows or the target's decoded tokens: the vs-floor check's buckets; for an artifact from
before, the floor target's own comparison)."""

from __future__ import annotations

from portcheck.report.format import NOT_RUN, UNKNOWN, VERDICT_LABEL, VERDICT_STATUSES, num, pct, sci, table
from portcheck.report.load import TargetData
from portcheck.report.sources import cite, every_target, shipped_record
from portcheck.targets import FLOOR_TARGET

# The comparisons by position: artifact kind -> (what a position is, the config key that turns it off, what the
# bf16 floor scored for the vs-floor check).
KINDS = {"corpus_compare": ("Positions", "corpus.enabled", "same windows"),
         "decode_compare": ("Decode steps", "decode.enabled", "same decoded tokens")}
COLUMNS = ("n", "KLD mean ± stderr", "KLD p99", "× bf16 floor", "Top-1 (ties as agreement)", "RMS Δp", "PPL ref",
           "PPL target", "Against the thresholds")
# A bucket localises (the verdict rests on all positions pooled and on the ratio checks): its words say so.
BUCKET_LABEL = {"pass": "within", "fail": "❌ over", "inconclusive": "⚠ inconclusive", NOT_RUN: "⚪ not run"}
RATIO_HEADER = ["Check", "Units", "KLD base", "KLD compared", "KLD basis", "Ratio (bounds)", "Smallest detectable",
                "Allowed", "Status"]


def long_context_section(targets: list[TargetData]) -> dict:
    section = by_position_section(targets, "corpus_compare")
    return {**section, "method": _corpus_method(section["first"]), **_storage_tables(targets)}


def decode_section(targets: list[TargetData]) -> dict:
    section = by_position_section(targets, "decode_compare")
    decode = (section["first"] or {}).get("decode")
    if not decode:
        return {**section, "method": {}}
    compared = [t for t in targets if t.role == "target" and isinstance(t.decode_compare, dict)]
    batches = [f"{t.name} {decode_batches_text((t.decode_compare.get('decode') or {}).get('batches'))}"
               for t in compared]
    return {**section, "method": {"sequences": decode.get("sequences"), "steps": decode.get("steps"),
                                  "prompt_tokens": decode.get("prompt_tokens") or [], "batches": batches}}


def decode_batches_text(batches: list[int] | None) -> str:
    """How a target's decode ran its prompts, from its decode dump ("not recorded" for a dump from before)."""
    if not batches:
        return "not recorded"
    if all(size == 1 for size in batches):
        return "each prompt alone"
    if len(batches) == 1:
        return f"as one batch of {batches[0]}"
    return "in batches of " + ", ".join(map(str, batches))


def by_position_section(targets: list[TargetData], kind: str) -> dict:
    compared = [t for t in targets if t.role == "target"]
    disabled = bool(compared) and all(position_status(t, kind) is None for t in compared)
    floor = next((t for t in compared if t.name == FLOOR_TARGET and getattr(t, kind)), None)
    return {"enabled": not disabled, "switch": KINDS[kind][1], "floor_target": FLOOR_TARGET if floor else None,
            "targets": [] if disabled else [_target(t, kind, floor) for t in compared],
            "first": next((getattr(t, kind) for t in compared if getattr(t, kind)), None)}


def position_status(data: TargetData, kind: str) -> str | None:
    """pass / fail / inconclusive / unknown / not run for a compared target; None where the config turns the
    comparison off."""
    if kind in data.turned_off:
        return None
    comparison = getattr(data, kind)
    if comparison is None:
        return NOT_RUN
    status = (comparison.get("verdict") or {}).get("status")
    return status if status in VERDICT_STATUSES else UNKNOWN


def growth_summary(data: TargetData, kind: str) -> str:
    """The verdict with the KLD growth past the first bucket, for the summary table."""
    status = position_status(data, kind)
    if status is None:
        return "not configured"
    growth = (getattr(data, kind) or {}).get("growth") or {}
    label = VERDICT_LABEL.get(status, status)
    if growth.get("ratio") is not None:
        return f"{label} (KLD growth {num(growth['ratio'])}x, bounds {num(growth.get('ratio_lower'))}-" \
               f"{num(growth.get('ratio_upper'))}x)"
    return label


def _target(data: TargetData, kind: str, floor_data: TargetData | None) -> dict:
    comparison = getattr(data, kind)
    if comparison is None:
        return {"target": data.name, "available": False, "reason": data.absent.get(kind, NOT_RUN)}
    path = data.paths[kind]
    verdict = comparison.get("verdict") or {}
    is_floor = data.name == FLOOR_TARGET
    floor_by_start, floor_kld, floor_source = _floor_buckets(comparison, path, kind, None if is_floor else floor_data)
    bucket_rows = [_bucket_row(b, floor_by_start.get(b["start"]), is_floor) for b in comparison.get("buckets") or []]
    overall = comparison.get("overall") or {}
    pooled = _bucket_row({**overall, "start": "all", "end": None}, floor_kld, is_floor)
    bucket_rows.append(pooled[:-1] + [VERDICT_LABEL.get((comparison.get("pooled") or {}).get("status"), UNKNOWN)])
    source = cite(path, "buckets", "overall", "pooled") + (f"; × bf16 floor: {floor_source}" if floor_source else "")
    growth = comparison.get("growth") or {}
    rows = [_ratio_row(f"growth past the first bucket ({growth.get('first_bucket', '—')})", growth,
                       growth.get("kld_first"), growth.get("kld_later"))]
    keys = ["growth"]
    floor_check = comparison.get("vs_floor") or {}
    if floor_check.get("status") == "not run":
        rows.append(["vs the bf16 floor", "—", "—", "—", "—", "—", "—", "—",
                     f"{VERDICT_LABEL.get(NOT_RUN, NOT_RUN)}: {floor_check.get('reason', UNKNOWN)}"])
        keys.append("vs_floor")
    elif floor_check:
        rows.append(_ratio_row(f"vs the bf16 floor ({FLOOR_TARGET}, {KINDS[kind][2]})", floor_check,
                               floor_check.get("kld_floor"), floor_check.get("kld_target")))
        keys.append("vs_floor")
    paths = comparison.get("decode_vs_prefill")
    if paths:
        rows.append(_ratio_row(f"decode vs prefill ({paths.get('prefill', '—')})", paths, paths.get("kld_prefill"),
                               paths.get("kld_decode")))
        keys.append("decode_vs_prefill")
    return {
        "target": data.name, "available": True,
        "verdict": VERDICT_LABEL.get(position_status(data, kind), UNKNOWN),
        "reasons": list(verdict.get("reasons") or []), "inconclusive": list(verdict.get("inconclusive") or []),
        "notes": list(verdict.get("notes") or []) + ([growth["note"]] if growth.get("note") else []),
        "lower_bound": bool(comparison.get("kld_is_lower_bound")), "kld_basis": comparison.get("kld_basis", UNKNOWN),
        "buckets": table([KINDS[kind][0], *COLUMNS], bucket_rows, source),
        "growth": table(RATIO_HEADER, rows, cite(path, *keys)),
        "growth_reason": growth.get("reason", ""),
    }


def _floor_buckets(comparison: dict, path: str, kind: str,
                   floor_data: TargetData | None) -> tuple[dict, float | None, str]:
    """The bf16 floor's KLD by bucket start and over all positions, and where they come from: the vs-floor check's
    own (the floor on the same windows or on this target's decoded tokens: paired), else the floor target's own
    comparison (its own decode: other tokens, said so)."""
    check = comparison.get("vs_floor") or {}
    if check.get("buckets") is not None:
        by_start = {b["start"]: b.get("kld_mean") for b in check["buckets"]}
        return by_start, check.get("kld_floor"), \
            f"{cite(path, 'vs_floor.buckets', 'vs_floor.kld_floor')} (the floor on the {KINDS[kind][2]})"
    floor = getattr(floor_data, kind) if floor_data else None
    if not floor:
        return {}, None, ""
    by_start = {b["start"]: b.get("kld_mean") for b in floor.get("buckets") or []}
    unpaired = " (its own decode: other tokens, not paired)" if kind == "decode_compare" else ""
    return by_start, (floor.get("overall") or {}).get("kld_mean"), \
        f"{cite(floor_data.paths[kind], 'buckets.kld_mean', 'overall.kld_mean')}{unpaired}"


def _ratio_row(label: str, check: dict, base, grown) -> list[str]:
    allowed = f"{num(check.get('growth_max'))}x above {sci(check.get('growth_floor'))}"
    return [label, units_text(check), sci(base), sci(grown), basis_text(check), ratio_text(check),
            _times(check.get("detectable_ratio")), allowed, VERDICT_LABEL.get(check.get("status"), UNKNOWN)]


def units_text(check: dict) -> str:
    units = check.get("units") or {}
    if not units:
        return "—"
    if check.get("paired"):
        return f"{units.get('compared')} sequences, paired"
    return f"{units.get('compared')} vs {units.get('base')} sequences"


def basis_text(check: dict) -> str:
    """'exact', or 'lower bound / exact' where the two sides differ (such a ratio is inconclusive)."""
    basis = check.get("basis") or {}
    sides = [basis.get("compared"), basis.get("base")]
    return UNKNOWN if None in sides else sides[0] if sides[0] == sides[1] else " / ".join(sides)


def ratio_text(check: dict) -> str:
    """'3.1x (2.4x-4.0x)': the ratio and its confidence bounds; '—' where no ratio was computed."""
    if check.get("ratio") is None:
        return "—"
    return f"{_times(check['ratio'])} ({_times(check.get('ratio_lower'))}-{_times(check.get('ratio_upper'))})"


def floor_text(check: dict | None) -> str:
    """A vs-floor check's ratio with its verdict, "not run" with the reason, or unknown (an artifact from before the
    check existed)."""
    if not check:
        return UNKNOWN
    if check.get("status") == NOT_RUN:
        return f"{VERDICT_LABEL.get(NOT_RUN, NOT_RUN)}: {check.get('reason', UNKNOWN)}"
    return f"{ratio_text(check)} {VERDICT_LABEL.get(check.get('status'), UNKNOWN)}"


def _times(value) -> str:
    return "—" if value is None else f"{value:.3g}x"


def _bucket_row(bucket: dict, floor_kld: float | None, is_floor: bool) -> list[str]:
    start, end = bucket.get("start"), bucket.get("end")
    kld = bucket.get("kld_mean")
    stderr = bucket.get("kld_mean_stderr")
    times_floor = "the floor" if is_floor else "—" if not floor_kld or kld is None else f"{kld / floor_kld:.2f}"
    return [
        "all" if start == "all" else f"{start}-{end}", str(bucket.get("n_positions", "—")),
        f"{sci(kld)} ± {sci(stderr)}" if stderr is not None else sci(kld), sci(bucket.get("kld_p99")), times_floor,
        pct(bucket.get("top1_agreement_with_ties")), pct(bucket.get("rms_delta_p")), num(bucket.get("ppl_ref")),
        num(bucket.get("ppl_target")), BUCKET_LABEL.get(bucket.get("status"), UNKNOWN),
    ]


def _corpus_method(comparison: dict | None) -> dict:
    if not comparison:
        return {}
    corpus = comparison.get("corpus") or {}
    return {"text": corpus.get("path", UNKNOWN), "sha256": (corpus.get("sha256") or "")[:12],
            "windows": comparison.get("windows"), "window_length": comparison.get("window_length"),
            "score_from": comparison.get("score_from"), "bucket": comparison.get("bucket"),
            "positions": (comparison.get("overall") or {}).get("n_positions")}


# What `make bench-compact` measured at the real vocabulary (a record shipped with portcheck, not this run's).
REAL_SHAPE_RECORD = ("portcheck.dump", "data/compact_error_real_shape.json")
BASIS_LABEL = {"exact": "exact (whole rows)", "estimate": "estimate (compact records)",
               "lower bound": "lower bound (top-k only)"}


def _storage_tables(targets: list[TargetData]) -> dict:
    """The method note on storage: what each corpus dump holds per position and what its KLD therefore is, and the
    compact records' KLD against the exact KLD: measured in this run where both dumps hold whole rows, and at the
    real vocabulary by make bench-compact."""
    compared = [t for t in targets if t.role == "target" and t.corpus_compare]
    if not compared:
        return {"storage": None, "estimator": None}
    rows, errors = [], []
    for t in compared:
        comparison = t.corpus_compare
        storage = comparison.get("storage") or {}
        positions = (comparison.get("windows") or 0) * (comparison.get("window_length") or 0)
        per_position = [f"{storage[k] / positions:,.0f}" if storage.get(k) and positions else UNKNOWN
                        for k in ("reference_bytes", "target_bytes")]
        rows.append([t.name, f"{storage.get('reference', UNKNOWN)} / {storage.get('target', UNKNOWN)}",
                     " / ".join(per_position), BASIS_LABEL.get(comparison.get("kld_basis"), UNKNOWN)])
        error = storage.get("compact_error")
        if error:
            errors.append(_error_row(f"this run: {t.name} vs the reference", error))
    source = cite(every_target(compared, "corpus_compare"), "storage", "kld_basis") + "; bytes: file size / positions"
    record, record_path = shipped_record(*REAL_SHAPE_RECORD)
    for regime, figures in (record.get("regimes") or {}).items():
        errors.append(_error_row(f"real shape, random weights {regime} (bf16 vs fp32, make bench-compact "
                                 f"{record.get('date', '')})", figures))
    error_source = cite(every_target(compared, "corpus_compare"), "storage.compact_error")
    if record:
        error_source += f"; {cite(record_path, 'regimes')}"
    header = ["Measured on", "Vocabulary", "Positions", "Top-k + sample ids", "Bytes per position (compact / whole)",
              "Exact mean KLD", "Estimate (error)", "Lower bound (error)"]
    return {"storage": table(["Target", "Dumps (reference / target)", "Stored bytes per position", "KLD"], rows,
                             source),
            "estimator": table(header, errors, error_source) if errors else None}


def _error_row(label: str, error: dict) -> list[str]:
    """One row of the estimator table from compare.compact.estimator_error's keys (bench-compact writes the same)."""
    def with_error(value, relative) -> str:
        if value is None:
            return "—"
        return sci(value) if relative is None else f"{sci(value)} ({relative * 100:+.2f}%)"

    bytes_cell = "—" if error.get("bytes_per_position") is None else (
        f"{error['bytes_per_position']:,.0f} / {error.get('full_bytes_per_position') or 0:,.0f}")
    vocab = error.get("vocab")
    return [label, f"{vocab:,}" if vocab else UNKNOWN, str(error.get("positions", "—")),
            f"{error.get('topk')} + {error.get('sample')}", bytes_cell, sci(error.get("exact_mean")),
            with_error(error.get("estimate_mean"), error.get("estimate_rel_error")),
            with_error(error.get("lower_bound_mean"), error.get("lower_bound_rel_error"))]

