"""Section Predicted tokens per prompt: each target's greedy continuation of every prompt, side by side."""

from __future__ import annotations

from portcheck.report.format import ABSENT, NOT_RUN, pct, table
from portcheck.report.load import TargetData
from portcheck.report.sources import cite, every_target


def predictions_section(targets: list[TargetData], prompts: list[str]) -> dict:
    reference = targets[0]
    header = ["#", "Prompt"]
    for t in targets:
        header += [f"{t.name}: first token", f"{t.name}: greedy continuation"]
    rows = []
    for i, prompt in enumerate(prompts):
        row = [str(i), prompt]
        for t in targets:
            token, text = _greedy(t, i)
            differs = t is not reference and reference.ran and t.ran and token != _greedy(reference, i)[0]
            row += [f"{token} (≠ reference)" if differs else token, text]
        rows.append(row)
    agreement = [_first_token_agreement(t, reference, len(prompts)) for t in targets[1:]]
    source = cite(every_target(targets, "logits"), "prompts", "greedy_tokens", "greedy_text")
    return {"table": table(header, rows, source), "agreement": agreement}


def _greedy(t: TargetData, index: int) -> tuple[str, str]:
    if not t.ran:
        return NOT_RUN, NOT_RUN
    tokens = t.meta.get("greedy_tokens") or []
    texts = t.meta.get("greedy_text") or []
    token = tokens[index][0] if index < len(tokens) and tokens[index] else ABSENT
    text = texts[index] if index < len(texts) else ABSENT
    return (token or "(empty)"), (text or "(empty)")


def _first_token_agreement(t: TargetData, reference: TargetData, count: int) -> str:
    if not (t.ran and reference.ran) or not count:
        return f"{t.name}: {NOT_RUN}"
    same = sum(_greedy(t, i)[0] == _greedy(reference, i)[0] for i in range(count))
    return f"{t.name}: {same}/{count} first tokens equal the reference's ({pct(same / count)})"
