"""Section No worse than the GPU port: msprobe's three-way standard. Each error of the candidate (an NPU target)
against the reference, divided by the same error of the benchmark (a GPU target); an accelerator is judged by
whether it is no worse than the GPU, not by absolute thresholds alone. Read from the comparison JSONs."""

from __future__ import annotations

from portcheck.report.format import INCONCLUSIVE, UNKNOWN, VERDICT_LABEL, sci, table
from portcheck.report.load import TargetData
from portcheck.report.sources import cite
from portcheck.targets import parse_target

# (label, comparison kind, key in its JSON (a dotted path), bands, whether the value has a KLD basis): msprobe's
# bands (reference.md section 8).
MEAN_BANDS, MAX_BANDS = (1.0, 2.0), (1.0, 10.0)
ERRORS = (
    ("KLD mean, seed prompts", "compare", "kld_mean", MEAN_BANDS, True),
    ("KLD p99, seed prompts", "compare", "kld_p99", MEAN_BANDS, True),
    ("RMS Δp, seed prompts", "compare", "rms_delta_p", MEAN_BANDS, False),
    ("MaxRelativeErr of logits", "compare", "max_rel_err", MAX_BANDS, False),
    ("KLD mean, long context", "corpus_compare", "overall.kld_mean", MEAN_BANDS, True),
    ("KLD mean, decode path", "decode_compare", "overall.kld_mean", MEAN_BANDS, True),
)
BAND_LABELS = ("✅ pass", "⚠️ warning", "❌ error")


def three_way_section(targets: list[TargetData], settings: dict) -> dict:
    compared = [t for t in targets if t.role == "target"]
    candidate = _pick(compared, settings.get("candidate"), "npu")
    benchmark = _pick(compared, settings.get("benchmark"), "gpu")
    if not candidate or not benchmark or candidate is benchmark:
        return {"available": False, "reason": "it needs an npu and a gpu target compared with the reference, or "
                                              "compare.three_way naming two targets"}
    rows, sources = [], set()
    for label, kind, key, bands, has_basis in ERRORS:
        a, b = _value(candidate, kind, key), _value(benchmark, kind, key)
        bases = [_value(d, kind, "kld_basis") if has_basis else None for d in (candidate, benchmark)]
        for data in (candidate, benchmark):
            if kind in data.paths:
                sources.add(cite(data.paths[kind], key, *(["kld_basis"] if has_basis else [])))
        rows.append([label, _with_basis(a, bases[0]), _with_basis(b, bases[1]), *_judge(a, b, bands, bases)])
    header = ["Error vs the reference", candidate.name, benchmark.name, "Ratio", "msprobe band"]
    return {"available": True, "candidate": candidate.name, "benchmark": benchmark.name,
            "table": table(header, rows, "; ".join(sorted(sources)) or "no comparison artifact was given")}


def _pick(compared: list[TargetData], name: str | None, device: str) -> TargetData | None:
    if name:
        return next((t for t in compared if t.name == name), None)
    return next((t for t in compared if parse_target(t.name).device == device), None)


def _value(data: TargetData, kind: str, key: str):
    value = getattr(data, kind)
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _with_basis(value, basis: str | None) -> str:
    return sci(value) + (f" ({basis})" if basis and value is not None else "")


def _judge(candidate, benchmark, bands: tuple[float, float], bases: list) -> list[str]:
    """[ratio, band]; unknown where either side is missing, and where the benchmark's error is 0 (no ratio);
    inconclusive where the two KLDs are of different bases or lower bounds (a ratio of those means nothing)."""
    if candidate is None or benchmark is None:
        return ["—", f"{UNKNOWN} (not measured on both)"]
    if bases[0] != bases[1]:
        label = VERDICT_LABEL[INCONCLUSIVE]
        return ["—", f"{label} (KLD bases differ: {bases[0]} vs {bases[1]}; dump both with whole rows or compact "
                     "records with a sample)"]
    if bases[0] == "lower bound":
        return ["—", f"{VERDICT_LABEL[INCONCLUSIVE]} (both KLDs are lower bounds)"]
    if benchmark == 0:
        return ["—", BAND_LABELS[0] if candidate == 0 else f"{UNKNOWN} (the benchmark's error is 0)"]
    ratio = candidate / benchmark
    band = 0 if ratio <= bands[0] else 1 if ratio <= bands[1] else 2
    return [f"{ratio:.3g}", f"{BAND_LABELS[band]} (≤ {bands[0]:g} pass, ≤ {bands[1]:g} warning)"]
