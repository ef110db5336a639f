"""Section Adaptation checklist: per target, each check of how the engine built and ran the model."""

from __future__ import annotations

from portcheck.report.format import DASH, NOT_RUN, STATUS_LABEL, UNKNOWN, show, table
from portcheck.report.load import TargetData
from portcheck.report.sources import cite
from portcheck.targets import parse_target


def adaptation_section(targets: list[TargetData]) -> list[dict]:
    # Every target lists every check any target made, so the lists line up.
    names = list(dict.fromkeys(n for t in targets if t.adaptation for n in (t.adaptation.get("items") or {})))
    return [_target_checklist(t, names) for t in targets]


def _target_checklist(data: TargetData, names: list[str]) -> dict:
    if data.adaptation is None:
        return {"target": data.name, "table": None, "reason": data.absent.get("adaptation", NOT_RUN)}
    items = data.adaptation.get("items") or {}
    rows = [_check_row(n, items.get(n), data) for n in names]
    source = cite(data.paths["adaptation"], "items.<check>.status", "items.<check>.value", "items.<check>.note")
    return {"target": data.name, "table": table(["Check", "Status", "Value", "Note"], rows, source), "reason": ""}


def _check_row(name: str, item: dict | None, data: TargetData) -> list[str]:
    if item is None:
        engine = parse_target(data.name).engine
        return [name, STATUS_LABEL[NOT_RUN], DASH, f"the {engine} engine does not measure this"]
    status = item.get("status", UNKNOWN)
    return [name, STATUS_LABEL.get(status, f"❔ {status}"), show(item.get("value")), item.get("note") or ""]
