"""Section Vision tower: each target's image prompts against the reference's (the text after the images, the image
tokens and rotary positions, every vision block)."""

from __future__ import annotations

from portcheck.report.format import DASH, NOT_RUN, VERDICT_LABEL, YES, NO, UNKNOWN, num, pct, table
from portcheck.report.sections.layers import precise_cosine
from portcheck.report.sections.positions import floor_text
from portcheck.report.load import TargetData
from portcheck.report.sources import cite, every_target

KIND = "vision_compare"


def vision_section(targets: list[TargetData]) -> dict:
    compared = [t for t in targets if t.role == "target"]
    if compared and all(KIND in t.turned_off for t in compared):
        return {"enabled": False}
    measured = [t for t in compared if vision_status(t) is not None]
    absent = [f"{t.name}: {_why_not(t)}" for t in compared if t not in measured]
    source = every_target(targets, KIND)
    first = measured[0].vision_compare if measured else {}
    return {"enabled": True, "absent": absent,
            "table": table(["Target", "Verdict", "KLD mean", "vs bf16 floor (bounds)", "Top-1 agreement",
                            "Positions", "Image tokens", "Rotary positions", "First block over",
                            "First block over the floor", "Patch embedding", "Encode / prompt (ms)",
                            "First token / prompt (ms, median)"],
                           [_row(t) for t in measured],
                           cite(source, "status", "text.kld_mean", "vs_floor", "text.top1_agreement",
                                "text.n_positions", "layout", "first_divergent", "tower")) if measured else None,
            "reasons": [f"{t.name}: {line}" for t in measured
                        for line in t.vision_compare.get("reasons", []) + t.vision_compare.get("inconclusive", [])],
            "blocks": [{"target": t.name, "table": _blocks_table(t, source)} for t in measured
                       if "blocks" in t.vision_compare],
            "prompts": ", ".join(f"{p} ({_grid(g)})" for p, g in zip(first.get("prompts", []),
                                                                    first.get("image_grid_thw", []))),
            "thresholds": _thresholds_text(first.get("thresholds"))}


def vision_status(data: TargetData) -> str | None:
    """The vision comparison's verdict where it has one; None where it did not run (it then leaves the target's
    verdict alone and the section says why)."""
    status = (data.vision_compare or {}).get("status")
    return status if status not in (None, NOT_RUN) else None


def _why_not(t: TargetData) -> str:
    if t.vision_compare is not None:
        return t.vision_compare.get("reason", UNKNOWN)
    return t.absent.get(KIND, NOT_RUN)


def _row(t: TargetData) -> list[str]:
    c = t.vision_compare
    if "text" not in c:  # the engine could not run the image prompts: the reason is listed under the table
        return [t.name, VERDICT_LABEL.get(c["status"], c["status"])] + [DASH] * 11
    text, layout, tower = c["text"], c["layout"], c["tower"]["target"]
    seconds = tower.get("encode_seconds") or []
    return [t.name, VERDICT_LABEL.get(c["status"], c["status"]), num(text.get("kld_mean")),
            floor_text(c.get("vs_floor")), pct(text.get("top1_agreement")), str(text.get("n_positions")),
            YES if layout["image_spans_same"] else f"{NO} (count or position differs)",
            _positions(layout), c["first_divergent"] or "none", _first_over_floor(c),
            str(tower.get("patch_embedding")),
            ", ".join(f"{1000 * s:.1f}" for s in seconds) or UNKNOWN, _median_ms(tower.get("first_token_seconds"))]


def _median_ms(seconds: list | None) -> str:
    known = sorted(s for s in seconds or [] if s is not None)
    return f"{1000 * known[len(known) // 2]:.1f}" if known else UNKNOWN


def _first_over_floor(c: dict) -> str:
    """The first block over the floor multiple; a dash where the floor check did not run (the reason is in the vs
    bf16 floor cell), unknown for an artifact written before it existed."""
    check = c.get("vs_floor") or {}
    if check.get("status") is None:
        return UNKNOWN
    if check["status"] == NOT_RUN:
        return DASH
    return f"{check['first_over'] or 'none'} (limit {check['multiple_max']:g}x)"


def _positions(layout: dict) -> str:
    same = layout.get("positions_same")
    if same is None:
        return f"{UNKNOWN} (not captured)"
    return f"{YES if same else NO} ({layout['positions_compared']} prompts)"


def _blocks_table(t: TargetData, source: str) -> dict:
    no_floor = (t.vision_compare.get("vs_floor") or {}).get("status") == NOT_RUN
    rows = [[b["name"], precise_cosine(b["cosine_min"]), pct(b["rel_l2_mean"]), pct(b["rel_l2_max"]),
             num(b["max_abs_err"]), DASH if no_floor else _times_floor(b), num(b["patches"]),
             "❌ yes" if b["over"] else "no"] for b in t.vision_compare["blocks"]]
    return table(["Block", "Cosine min", "Rel. L2 mean", "Rel. L2 max", "MaxAbsErr", "Rel. L2 × bf16 floor",
                  "Patches / tokens", "Over"], rows, cite(t.paths.get(KIND, source), "blocks"))


def _times_floor(block: dict) -> str:
    multiple = block.get("floor_multiple")
    if multiple is None:
        return UNKNOWN
    return f"{multiple:.2f}x" + (" ❌" if block.get("over_floor") else "")


def _thresholds_text(thresholds: dict | None) -> str:
    """The localisation thresholds a comparison used; none where no target was compared (a reference-only run)."""
    if not thresholds:
        return ""
    return f" (cosine ≥ {thresholds['cosine_min']}, relative L2 ≤ {thresholds['rel_l2_max']})"


def _grid(grids: list) -> str:
    return " + ".join(f"{h}x{w} patches" for _, h, w in grids)
