"""Section Determinism: per target, greedy decoding repeated, and each prompt alone vs in the batch."""

from __future__ import annotations

from portcheck.report.format import NO, NOT_RUN, YES, pct, show, table
from portcheck.report.load import TargetData
from portcheck.report.sources import cite


def determinism_section(targets: list[TargetData]) -> list[dict]:
    return [_target_determinism(t) for t in targets]


def _target_determinism(data: TargetData) -> dict:
    d = data.determinism
    if d is None:
        return {"target": data.name, "table": None, "reason": data.absent.get("determinism", NOT_RUN)}
    rows = [[str(i), p.get("prompt", ""), p.get("first_token") or "(empty)",
             YES if p.get("identical_across_repeats") else NO, YES if p.get("batch_invariant") else NO]
            for i, p in enumerate(d.get("per_prompt") or [])]
    mismatches = [f"prompt {m.get('prompt')}, repeat {m.get('repeat')}: first differs at token "
                  f"{m.get('first_difference')}" for m in d.get("repeat_mismatches") or []]
    mismatches += [f"prompt {m.get('prompt')} alone vs in the batch: first differs at token "
                   f"{m.get('first_difference')}" for m in d.get("batch_mismatches") or []]
    source = cite(data.paths["determinism"], "per_prompt")
    return {
        "target": data.name, "reason": "",
        "table": table(["#", "Prompt", "Predicted token", "Identical across repeats", "Batch-invariant"], rows,
                       source),
        "repeat_rate": pct(d.get("repeat_identical_rate")), "batch_rate": pct(d.get("batch_invariant_rate")),
        "prompts": show(d.get("prompts")), "repeats": show(d.get("repeats")), "max_tokens": show(d.get("max_tokens")),
        "mismatches": mismatches,
    }
