"""Section Where it diverges: each target's hidden state after every decoder layer against the reference's
(compare/<target>.layers.json): the first layer over the thresholds, each layer type's share of the error growth,
and the per-layer table."""

from __future__ import annotations

from portcheck.report.format import NOT_RUN, num, pct, sci, table
from portcheck.report.load import TargetData
from portcheck.report.sources import cite

HEADER = ["Layer", "Type", "Cosine min", "Rel. L2 mean", "Rel. L2 max", "MaxAbsErr", "Added rel. L2", "Over"]


def layers_section(targets: list[TargetData]) -> dict:
    compared = [t for t in targets if t.role == "target"]
    disabled = bool(compared) and all("layers_compare" in t.turned_off for t in compared)
    first = next((t.layers_compare for t in compared if t.layers_compare and t.layers_compare.get("layers")), None)
    return {"enabled": not disabled, "targets": [] if disabled else [_target(t) for t in compared],
            "thresholds": (first or {}).get("thresholds") or {}, "sequences": (first or {}).get("sequences"),
            "positions": (first or {}).get("positions")}


def _target(data: TargetData) -> dict:
    c = data.layers_compare
    if c is None:
        return {"target": data.name, "available": False, "reason": data.absent.get("layers_compare", NOT_RUN)}
    if not c.get("layers"):
        return {"target": data.name, "available": False, "reason": c.get("reason") or c.get("status", NOT_RUN)}
    rows = [[row["name"], row["type"], precise_cosine(row["cosine_min"]), pct(row["rel_l2_mean"]),
             pct(row["rel_l2_max"]), sci(row["max_abs_err"]),
             "—" if row["added_rel_l2"] is None else pct(row["added_rel_l2"]), "❌ yes" if row["over"] else "no"]
            for row in c["layers"]]
    return {"target": data.name, "available": True, "finding": c.get("finding", ""),
            "table": table(HEADER, rows, cite(data.paths["layers_compare"], "layers", "first_divergent",
                                              "error_growth_by_type"))}


def precise_cosine(value) -> str:
    return "—" if value is None else f"{value:.6f}" if value > 0.99 else num(value)
