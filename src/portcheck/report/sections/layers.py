"""Section Where it diverges: each target's hidden state after every decoder layer against the reference's
(compare/<target>.layers.json): the first layer over the thresholds, each layer type's share of the error growth,
the per-layer table, and each Gated DeltaNet layer's recurrent state after the sequences."""

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


STATE_HEADER = ["GDN layer", "Cosine min", "Rel. L2 mean", "Rel. L2 max", "MaxAbsErr", "Over"]


def _target(data: TargetData) -> dict:
    c = data.layers_compare
    if c is None:
        return {"target": data.name, "available": False, "status": NOT_RUN,
                "reason": data.absent.get("layers_compare", NOT_RUN)}
    if not c.get("layers"):
        return {"target": data.name, "available": False, "status": c.get("status") or NOT_RUN,
                "reason": c.get("reason") or c.get("status", NOT_RUN)}
    rows = [[row["name"], row["type"], precise_cosine(row["cosine_min"]), pct(row["rel_l2_mean"]),
             pct(row["rel_l2_max"]), sci(row["max_abs_err"]),
             "—" if row["added_rel_l2"] is None else pct(row["added_rel_l2"]), over(row)]
            for row in c["layers"]]
    source = data.paths["layers_compare"]
    return {"target": data.name, "available": True, "finding": c.get("finding", ""),
            "table": table(HEADER, rows, cite(source, "layers", "first_divergent", "error_growth_by_type")),
            "states": _states(c.get("gdn_states") or {}, source)}


def _states(states: dict, source) -> dict:
    dtypes = states.get("state_dtype") or {}
    found = {"dtype_reference": dtypes.get("reference") or "unknown", "dtype_target": dtypes.get("target") or "unknown"}
    if not states.get("layers"):
        return {**found, "available": False, "reason": states.get("reason") or "not determined"}
    rows = [[row["name"], precise_cosine(row["cosine_min"]), pct(row["rel_l2_mean"]), pct(row["rel_l2_max"]),
             sci(row["max_abs_err"]), over(row)] for row in states["layers"]]
    return {**found, "available": True, "sequences": states.get("sequences"), "first": states.get("first_divergent"),
            "table": table(STATE_HEADER, rows, cite(source, "gdn_states"))}


def over(row: dict) -> str:
    return "❌ yes" if row["over"] else "no"


def precise_cosine(value) -> str:
    return "—" if value is None else f"{value:.6f}" if value > 0.99 else num(value)
