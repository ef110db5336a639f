"""A target's task accuracy against the reference's, item by item (not only the score): the share of items where
both give the same answer, an exact McNemar test on the items one gets right and the other wrong, and
vllm-ascend's accuracy rule (the target's score within `rtol` of the reference's) beside it.

A task fails when the target is significantly worse (McNemar two-sided p < alpha, more items lost than gained) or
outside rtol. It is inconclusive, not a pass, when McNemar could not have failed on these items: even the target
losing every item the reference gets right would not reach alpha (a reference at 0 on a task, or right on fewer
than 6 items at alpha 0.05)."""

from __future__ import annotations

from math import comb
from typing import Any

from portcheck.atomic import write_json
from portcheck.errors import PortcheckError


def mcnemar_exact(lost: int, gained: int) -> float:
    """Two-sided exact McNemar p-value: `lost` items right on the reference and wrong on the target, `gained`
    the reverse; under no difference each discordant item is a fair coin (binomial, n = lost + gained, 1/2)."""
    n = lost + gained
    if n == 0:
        return 1.0
    tail = sum(comb(n, k) for k in range(min(lost, gained) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def within_rtol(reference: float, measured: float, rtol: float) -> bool:
    """vllm-ascend's accuracy rule: np.isclose(measured, reference, rtol) (its atol 1e-8 included)."""
    return abs(measured - reference) <= 1e-8 + rtol * abs(reference)


def compare_task(reference: dict, target: dict, rtol: float, alpha: float) -> dict[str, Any]:
    ref_items = {item["doc_id"]: item for item in reference["items"]}
    pairs = [(ref_items[item["doc_id"]], item) for item in target["items"] if item["doc_id"] in ref_items]
    if not pairs:
        raise PortcheckError("accuracy: the target's and the reference's items have no document in common; rerun "
                             "both evaluations with the same tasks and limit")
    same = sum(ref["answer"] == got["answer"] for ref, got in pairs)
    lost = sum(ref["correct"] >= 0.5 > got["correct"] for ref, got in pairs)
    gained = sum(got["correct"] >= 0.5 > ref["correct"] for ref, got in pairs)
    p_value = mcnemar_exact(lost, gained)
    ref_score = sum(ref["correct"] for ref, _ in pairs) / len(pairs)
    score = sum(got["correct"] for _, got in pairs) / len(pairs)
    rtol_ok = within_rtol(ref_score, score, rtol)
    significant = p_value < alpha and lost > gained
    # The smallest p-value these items allow: the target losing every item the reference gets right.
    could_fail = mcnemar_exact(round(ref_score * len(pairs)), 0) < alpha
    status = "fail" if significant or not rtol_ok else "pass" if could_fail else "inconclusive"
    return {"metric": target["metric"], "n": len(pairs), "reference_score": ref_score, "score": score,
            "same_answer": same / len(pairs), "lost": lost, "gained": gained, "mcnemar_p": p_value,
            "significantly_worse": significant, "mcnemar_could_fail": could_fail, "within_rtol": rtol_ok,
            "status": status,
            "reference_stderr": reference.get("stderr"), "stderr": target.get("stderr")}


def compare_accuracy(reference: dict, target: dict, rtol: float, alpha: float, in_verdict: bool) -> dict:
    missing = sorted(set(reference["tasks"]) ^ set(target["tasks"]))
    if missing:
        raise PortcheckError(f"accuracy: tasks {', '.join(missing)} are evaluated on one side only; rerun both "
                             "evaluations (they follow accuracy.tasks)")
    tasks = {name: compare_task(reference["tasks"][name], target["tasks"][name], rtol, alpha)
             for name in sorted(target["tasks"])}
    statuses = [task["status"] for task in tasks.values()]
    status = "fail" if "fail" in statuses else "inconclusive" if "inconclusive" in statuses else "pass"
    return {"reference": reference["target"], "target": target["target"], "rtol": rtol, "alpha": alpha,
            "in_verdict": in_verdict, "tasks": tasks, "verdict": {"status": status}}


def compare_accuracy_files(reference_path, target_path, output, rtol: float, alpha: float, in_verdict: bool) -> dict:
    from portcheck.artifacts import read_artifact

    result = compare_accuracy(read_artifact(reference_path, "accuracy"), read_artifact(target_path, "accuracy"),
                              rtol, alpha, in_verdict)
    write_json(output, result)
    return result
