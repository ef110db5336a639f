"""Section Summary: does each target run, does it agree with the reference, and do the artifacts fit together."""

from __future__ import annotations

from portcheck.report.format import DASH, NO, NOT_RUN, UNKNOWN, VERDICT_LABEL, YES, num, pct, sci, table
from portcheck.report.load import TargetData
from portcheck.report.sections.positions import KINDS as POSITION_KINDS, growth_summary, position_status
from portcheck.report.sources import cite, every_target


def summary_section(targets: list[TargetData], manifest: dict | None, manifest_path: str | None,
                    prompts: list[str], modes: dict[str, dict[str, str]] | None = None) -> dict:
    """modes: target -> {mode: status} of its engine-mode runs (section Engine modes)."""
    modes = modes or {}
    return {"overall": overall_verdict(targets, modes), "table": summary_table(targets, modes),
            "consistency": consistency_table(targets, manifest, manifest_path, prompts)}


def summary_table(targets: list[TargetData], modes: dict[str, dict[str, str]] | None = None) -> dict:
    rows = []
    modes = modes or {}
    for t in targets:
        status = agreement_status(t, modes.get(t.name))
        c = t.compare or {}
        rows.append([
            t.name, t.role, run_label(t), VERDICT_LABEL.get(status, status),
            sci(c.get("kld_mean")) if t.compare else DASH,
            by_position_summary(t, "corpus_compare"),
            by_position_summary(t, "decode_compare"),
            pct(c.get("top1_agreement")) if t.compare else DASH,
            num(c.get("delta_ppl")) if t.compare else DASH,
            modes_summary(modes.get(t.name)), determinism_summary(t), adaptation_counts(t),
        ])
    header = ["Target", "Role", "Does it run", "Agrees with reference", "KLD mean", "Long context", "Decode path",
              "Top-1 agreement", "ΔPPL", "Engine modes", "Determinism", "Adaptation checks"]
    source = "; ".join([
        cite(every_target(targets, "logits"), "metadata"),
        cite(every_target(targets, "compare"), "verdict.status", "kld_mean", "top1_agreement", "delta_ppl",
             "nonfinite"),
        cite(every_target(targets, "corpus_compare"), "verdict.status", "growth.ratio"),
        cite(every_target(targets, "decode_compare"), "verdict.status", "growth.ratio"),
        "engine modes: results/<model>/compare/<target>+<mode>.mode.json (status)",
        cite(every_target(targets, "determinism"), "repeat_identical_rate", "batch_invariant_rate"),
        cite(every_target(targets, "adaptation"), "items.*.status"),
    ])
    return table(header, rows, source)


def run_label(data: TargetData) -> str:
    if not data.ran:
        return f"⚪ not run ({data.absent.get('logits', 'no dump')})"
    nonfinite = target_nonfinite_count(data.compare or {})
    if nonfinite:
        return f"❌ NaN/inf at {nonfinite} positions"
    return YES


def target_nonfinite_count(compare: dict) -> int:
    """NaN/inf positions on the target's side (compare.py lists each as {prompt, row, side})."""
    return sum(1 for entry in compare.get("nonfinite") or [] if entry.get("side") == "target")


def modes_summary(modes: dict[str, str] | None) -> str:
    if not modes:
        return DASH
    return ", ".join(f"{mode} {VERDICT_LABEL.get(status, status)}" for mode, status in modes.items())


def agreement_status(data: TargetData, modes: dict[str, str] | None = None) -> str:
    """The seed-prompt verdict combined with the long-context, decode-path and engine-mode ones (where
    configured): a failure of any fails; a missing or unproven one leaves the target without a pass."""
    if data.role == "reference":
        return "reference"
    if data.compare is None:
        return NOT_RUN
    status = (data.compare.get("verdict") or {}).get("status")
    statuses = [status if status in ("pass", "fail") else UNKNOWN]
    statuses += [s for s in (position_status(data, kind) for kind in POSITION_KINDS) if s]
    statuses += [s if s in ("pass", "fail") else UNKNOWN for s in (modes or {}).values()]
    if "fail" in statuses:
        return "fail"
    return "pass" if all(s == "pass" for s in statuses) else UNKNOWN


def by_position_summary(data: TargetData, kind: str) -> str:
    """A comparison by position (long context, decode) in one cell: '—' for the reference."""
    return DASH if data.role == "reference" else growth_summary(data, kind)


def adaptation_counts(data: TargetData) -> str:
    if data.adaptation is None:
        return NOT_RUN
    statuses = [item.get("status") for item in (data.adaptation.get("items") or {}).values()]
    parts = [f"{statuses.count(s)} {s}" for s in ("ok", "failed", "not determined") if statuses.count(s)]
    return ", ".join(parts) or "no checks"


def determinism_summary(data: TargetData) -> str:
    if data.determinism is None:
        return NOT_RUN
    d = data.determinism
    return f"{pct(d.get('repeat_identical_rate'))} identical, {pct(d.get('batch_invariant_rate'))} batch-invariant"


def overall_verdict(targets: list[TargetData], modes: dict[str, dict[str, str]] | None = None) -> dict:
    compared = [t for t in targets if t.role == "target"]
    statuses = {t.name: agreement_status(t, (modes or {}).get(t.name)) for t in compared}
    failing = [n for n, s in statuses.items() if s == "fail"]
    open_ = [n for n, s in statuses.items() if s != "pass"]
    not_running = [t.name for t in targets if not t.ran]
    if not compared:
        return _verdict(UNKNOWN, "no target was compared with the reference")
    if failing:
        return _verdict("fail", f"{len(failing)} of {len(compared)} compared targets disagree with the reference: "
                                f"{', '.join(failing)}")
    if open_ or not_running:
        return _verdict(UNKNOWN, f"no verdict for {', '.join(sorted(set(open_ + not_running)))} (not run or unknown)")
    return _verdict("pass", f"every compared target ({len(compared)}) agrees with the reference within the "
                            "thresholds below")


def _verdict(status: str, reason: str) -> dict:
    return {"status": status, "label": VERDICT_LABEL[status], "reason": reason}


def consistency_table(targets: list[TargetData], manifest: dict | None, manifest_path: str | None,
                      prompts: list[str]) -> dict:
    """Figures that must agree with each other across artifacts; a mismatch means a stale or mixed-up artifact."""
    rows = []
    model_sha = (manifest or {}).get("model_sha")
    for t in targets:
        if t.meta and model_sha:
            same = t.meta.get("model_sha") == model_sha
            rows.append([f"{t.name}: dump made from the manifest's checkpoint (model_sha)", YES if same else NO])
        if t.meta and prompts:
            rows.append([f"{t.name}: dump has the report's {len(prompts)} prompts",
                         YES if list(t.meta.get("prompts") or []) == prompts else NO])
        if t.compare and prompts and t.compare.get("n_prompts") is not None:
            rows.append([f"{t.name}: comparison covers {len(prompts)} prompts",
                         YES if t.compare["n_prompts"] == len(prompts) else f"{NO} ({t.compare['n_prompts']})"])
    sources = [cite(manifest_path, "model_sha")] if manifest_path else []
    sources += [cite(every_target(targets, "logits"), "model_sha", "prompts"),
                cite(every_target(targets, "compare"), "n_prompts")]
    return table(["Check", "Holds"], rows, "; ".join(sources))
