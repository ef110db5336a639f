"""Section Task accuracy: each target's lm-eval scores against the reference's, item by item."""

from __future__ import annotations

from portcheck.report.format import DASH, VERDICT_LABEL, YES, NO, num, pct, table
from portcheck.report.load import TargetData
from portcheck.report.sources import cite, every_target

KIND = "accuracy_compare"


def accuracy_section(targets: list[TargetData], enabled: bool) -> dict:
    """enabled: accuracy.enabled (a target the config leaves out, the floor without accuracy.floor, is listed with
    the setting instead)."""
    compared = [t for t in targets if t.role == "target"]
    if not enabled:
        return {"enabled": False, "table": None, "absent": [], "in_verdict": False}
    rows, absent = [], []
    for t in compared:
        comparison = t.accuracy_compare
        if comparison is None:
            absent.append(f"{t.name}: {t.absent.get(KIND, 'not run')}")
            continue
        for name, task in comparison["tasks"].items():
            rows.append([t.name, name, task["metric"], str(task["n"]), num(task["reference_score"]),
                         num(task["score"]), pct(task["same_answer"]), f"{task['lost']} / {task['gained']}",
                         num(task["mcnemar_p"]), YES if task["within_rtol"] else NO,
                         VERDICT_LABEL.get(task["status"], task["status"])])
    header = ["Target", "Task", "Metric", "Items", "Reference", "Target score", "Same answer",
              "Lost / gained", "McNemar p", "Within rtol", "Status"]
    first = next((t.accuracy_compare for t in compared if t.accuracy_compare), None) or {}
    source = cite(every_target(targets, KIND), "tasks.*") + "; per item: results/<model>/<target>/accuracy.json"
    return {"enabled": True, "table": table(header, rows, source) if rows else None, "absent": absent,
            "rtol": num(first.get("rtol")) if first else DASH, "alpha": num(first.get("alpha")) if first else DASH,
            "in_verdict": bool(first.get("in_verdict"))}


def accuracy_status(data: TargetData) -> str | None:
    """The accuracy comparison's status where the config puts it in the verdict; None otherwise."""
    comparison = data.accuracy_compare
    if comparison is None or not comparison.get("in_verdict"):
        return None
    return (comparison.get("verdict") or {}).get("status")
