"""Section Where it diverges: each target's hidden state after every decoder layer against the reference's
(compare/<target>.layers.json): the first layer over the thresholds, each layer type's share of the error growth,
the per-layer table, each layer's added error as a multiple of the bf16 floor's with the first layer over the
configured multiple, and each Gated DeltaNet layer's recurrent state after the sequences."""

from __future__ import annotations

from portcheck.report.format import NOT_RUN, UNKNOWN, num, pct, sci, speedup, table
from portcheck.report.load import TargetData
from portcheck.report.sources import cite

HEADER = ["Layer", "Type", "Cosine min", "Rel. L2 mean", "Rel. L2 max", "MaxAbsErr", "Added rel. L2", "Over"]
FLOOR_HEADER = ["Layer", "Type", "Added error", "Floor's added error", "× floor", "Over the multiple"]


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
            "floor": _floor(c, source), "states": _states(c.get("gdn_states") or {}, source)}


def _floor(comparison: dict, source) -> dict:
    """The multiples of the floor's added error, layer by layer; the floor's finding names the first layer over the
    configured multiple (or why the multiples are unknown)."""
    floor = comparison.get("floor")
    if not floor:
        return {"finding": "unknown: this comparison predates the floor; rerun rule compare_layers", "table": None}
    floor_added = floor.get("added_error")
    if not floor_added:  # no floor: the finding says why
        return {"finding": floor["finding"], "table": None}
    rows = [[row["name"], row["type"], pct(row["added_error"]), pct(floor_added[slot]), speedup(row["floor_multiple"]),
             over_floor(row)]
            for slot, row in enumerate(comparison["layers"]) if row["index"] is not None]
    keys = ("layers.added_error", "layers.floor_multiple", "layers.over_floor", "floor.added_error",
            "floor.first_over")
    return {"target": floor.get("target"), "multiple_max": floor.get("multiple_max"), "finding": floor["finding"],
            "table": table(FLOOR_HEADER, rows, cite(source, *keys))}


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
    """Over the thresholds; a non-finite output or state says so, with its count per side."""
    found = row.get("non_finite")
    if found:
        sides = ", ".join(f"{side} {count:,}" for side, count in found.items() if side != "first" and count)
        return f"❌ non-finite ({sides})"
    return "❌ yes" if row["over"] else "no"


def over_floor(row: dict) -> str:
    found = row.get("over_floor")
    return UNKNOWN if found is None else "❌ yes" if found else "no"


def precise_cosine(value) -> str:
    return "—" if value is None else f"{value:.6f}" if value > 0.99 else num(value)
