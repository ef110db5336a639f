"""Section Summary: does each target run, does it agree with the reference, and do the artifacts fit together."""

from __future__ import annotations

from portcheck.report.format import (DASH, INCONCLUSIVE, NO, NOT_RUN, UNKNOWN, VERDICT_LABEL, VERDICT_STATUSES, YES,
                                     num, pct, sci, table)
from portcheck.report.load import TargetData
from portcheck.report.sections.accuracy import accuracy_status
from portcheck.report.sections.vision import vision_status
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
        status, why = agreement(t, modes.get(t.name))
        c = t.compare or {}
        rows.append([
            t.name, t.role, run_label(t), VERDICT_LABEL.get(status, status) + (f": {why}" if why else ""),
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
        cite(every_target(targets, "compare"), "verdict.status", "verdict.inconclusive", "kld_mean", "top1_agreement",
             "delta_ppl", "nonfinite"),
        cite(every_target(targets, "corpus_compare"), "verdict.status", "verdict.inconclusive", "growth.ratio"),
        cite(every_target(targets, "decode_compare"), "verdict.status", "verdict.inconclusive", "growth.ratio"),
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
    return agreement(data, modes)[0]


def agreement(data: TargetData, modes: dict[str, str] | None = None) -> tuple[str, str]:
    """(status, why): the seed-prompt verdict combined with the long-context, decode-path and engine-mode ones
    (where configured), the image prompts where they ran, and task accuracy where accuracy.in_verdict. A failure of any fails; otherwise a part without a verdict (not run, unknown) leaves the
    target unknown, and one that is inconclusive (a mode run that did not prove it ran too) makes it inconclusive;
    `why` names those parts and the first reason; pass only when every part passes."""
    if data.role == "reference":
        return "reference", ""
    if data.compare is None:
        return NOT_RUN, ""
    parts = {"seed prompts": _part_status(data.compare)}
    parts.update({POSITION_LABEL[kind]: (status, _first_open_reason(getattr(data, kind)))
                  for kind in POSITION_KINDS if (status := position_status(data, kind))})
    parts.update({f"mode {mode}": (status if status in VERDICT_STATUSES else INCONCLUSIVE, status)
                  for mode, status in (modes or {}).items() if status != "pass"})
    if vision := vision_status(data):
        parts["image prompts"] = (vision if vision in VERDICT_STATUSES else UNKNOWN, _first_open_reason(
            data.vision_compare.get("text")))
    if accuracy := accuracy_status(data):
        parts["task accuracy"] = (accuracy if accuracy in VERDICT_STATUSES else UNKNOWN, "")
    failed = [name for name, (status, _) in parts.items() if status == "fail"]
    if failed:
        return "fail", f"{', '.join(failed)} fail"
    unknown = [name for name, (status, _) in parts.items() if status in (UNKNOWN, NOT_RUN)]
    if unknown:  # an artifact without a verdict, or one that was not produced
        return UNKNOWN, f"no verdict for {', '.join(unknown)}"
    open_ = {name: reason for name, (status, reason) in parts.items() if status != "pass"}
    if not open_:
        return "pass", ""
    name, reason = next(iter(open_.items()))
    return INCONCLUSIVE, f"{', '.join(open_)}" + (f" ({name}: {reason})" if reason else "")


POSITION_LABEL = {"corpus_compare": "long context", "decode_compare": "decode path"}


def _part_status(comparison: dict) -> tuple[str, str]:
    status = (comparison.get("verdict") or {}).get("status")
    return (status if status in VERDICT_STATUSES else UNKNOWN), _first_open_reason(comparison)


def _first_open_reason(comparison: dict | None) -> str:
    """The first inconclusive reason of a comparison's verdict, for the summary's own cell."""
    texts = ((comparison or {}).get("verdict") or {}).get("inconclusive") or []
    return texts[0] + (f" (+{len(texts) - 1} more)" if len(texts) > 1 else "") if texts else ""


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
        return data.not_run("determinism")
    d = data.determinism
    return f"{pct(d.get('repeat_identical_rate'))} identical, {pct(d.get('batch_invariant_rate'))} batch-invariant"


def overall_verdict(targets: list[TargetData], modes: dict[str, dict[str, str]] | None = None) -> dict:
    compared = [t for t in targets if t.role == "target"]
    statuses = {t.name: agreement_status(t, (modes or {}).get(t.name)) for t in compared}
    failing = [n for n, s in statuses.items() if s == "fail"]
    inconclusive = [n for n, s in statuses.items() if s == INCONCLUSIVE]
    open_ = [n for n, s in statuses.items() if s not in ("pass", INCONCLUSIVE)]
    not_running = [t.name for t in targets if not t.ran]
    if not compared:
        return _verdict(UNKNOWN, "no target was compared with the reference")
    if failing:
        return _verdict("fail", f"{len(failing)} of {len(compared)} compared targets disagree with the reference: "
                                f"{', '.join(failing)}")
    if inconclusive:
        return _verdict(INCONCLUSIVE, f"the evidence does not settle {', '.join(inconclusive)} (see the table)"
                        + (f"; no verdict for {', '.join(sorted(set(open_ + not_running)))}" if open_ or not_running
                           else ""))
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
