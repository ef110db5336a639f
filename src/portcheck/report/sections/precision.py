"""Section Precision comparison: each target's comparison with the reference (compare/<target>.json): its
metrics beside published anchors, the checks behind the verdict, and the figures per prompt."""

from __future__ import annotations

from typing import Any

from portcheck.report.format import (NOT_RUN, UNKNOWN, VERDICT_LABEL, VERDICT_STATUSES, clip, metric, num, pct, show,
                                     table)
from portcheck.report.load import TargetData
from portcheck.report.sources import cite, every_target

# (compare.json key, label, published anchor)
METRICS = (
    ("kld_mean", "KLD mean (nats)", "llama.cpp, LLaMA-3-8B: bf16 vs fp16 2.5e-5; q8_0 1.4e-3"),
    ("kld_mean_stderr", "KLD mean, standard error", ""),
    ("kld_median", "KLD median", ""),
    ("kld_p99", "KLD 99th percentile", ""),
    ("kld_p999", "KLD 99.9th percentile", "llama.cpp, LLaMA-3-8B: bf16 vs fp16 8.0e-4"),
    ("kld_max", "KLD max", ""),
    ("top1_agreement", "top-1 agreement (same top token)", "llama.cpp 'same top p': bf16 vs fp16 99.74%, q8_0 97.7%"),
    ("top1_ties", "top-1 disagreements that are ties", "reference top-2 within the tie tolerance"),
    ("top1_agreement_with_ties", "top-1 agreement counting ties as agreement", ""),
    ("top5_overlap", "top-5 overlap", ""),
    ("mean_delta_p", "mean Δp (probability of the actual next token)", ""),
    ("rms_delta_p", "RMS Δp", "llama.cpp, LLaMA-3-8B: bf16 vs fp16 0.15%"),
    ("ppl_ref", "perplexity, reference", ""),
    ("ppl_target", "perplexity, target", ""),
    ("delta_ppl", "ΔPPL (target − reference)", ""),
    ("ppl_rel_delta", "|PPL(target) / PPL(reference) − 1|", "the seed's '<1%' requirement, here measured"),
    ("cosine_min", "cosine similarity of logits, min over prompts", "msprobe: < 0.99 (with MaxAbsErr > 0.001) fails"),
    ("cosine_mean", "cosine similarity, mean over prompts", ""),
    ("max_abs_err", "MaxAbsErr of logits", "msprobe: > 1 fails"),
    ("max_rel_err", "MaxRelativeErr of logits", ""),
    ("thousandth_err_ratio", "share of logits with relative error < 0.001", "msprobe one-thousandth ratio"),
    ("five_thousandths_err_ratio", "share of logits with relative error < 0.005", "msprobe five-thousandths ratio"),
    ("msprobe_failed_prompts", "prompts failing msprobe's pass rule", ""),
    ("greedy_first_token_agreement", "greedy first token agreement", ""),
    ("greedy_common_prefix_mean", "greedy common prefix (tokens, mean)", "vLLM check_logprobs_close walks this"),
    ("n_positions", "positions compared (finite on both sides)", ""),
    ("n_prompts", "prompts compared", ""),
    ("nonfinite_count", "positions with NaN/inf", "any NaN/inf fails msprobe"),
)
# Keys whose names would mislead `metric`'s formatting by name.
FORMAT_BY_KEY = {"ppl_ratio": num, "msprobe_failed_prompts": num, "mean_delta_p": pct}
# (per_prompt key, column label): the columns of the per-prompt table, where compare.json has the key.
PER_PROMPT_COLUMNS = (
    ("n_positions", "Positions"), ("kld_mean", "KLD mean"), ("kld_max", "KLD max"),
    ("top1_agreement", "Top-1 agreement"), ("top1_ties", "Ties"), ("top5_overlap", "Top-5 overlap"),
    ("rms_delta_p", "RMS Δp"), ("ppl_ref", "PPL ref"), ("ppl_target", "PPL target"),
    ("cosine", "Cosine"), ("cosine_min", "Cosine"), ("max_abs_err", "MaxAbsErr"), ("max_rel_err", "MaxRelErr"),
    ("msprobe_pass", "msprobe"), ("greedy_common_prefix", "Greedy common prefix"),
    ("nonfinite_count", "NaN/inf positions"),
)


def metric_text(key: str, value: Any) -> str:
    if isinstance(value, bool):
        return passed_mark(value)
    return FORMAT_BY_KEY[key](value) if key in FORMAT_BY_KEY else metric(key, value)


def passed_mark(value: Any) -> str:
    return {True: "✅", False: "❌"}.get(value, "❔ not available")


def precision_section(targets: list[TargetData], prompts: list[str]) -> list[dict]:
    return [_comparison(t, targets, prompts) for t in targets if t.role == "target"]


def _comparison(data: TargetData, targets: list[TargetData], prompts: list[str]) -> dict:
    c = data.compare
    if c is None:
        return {"target": data.name, "available": False, "reason": data.absent.get("compare", NOT_RUN)}
    path = data.paths["compare"]
    per_prompt_source = f"{cite(path, 'per_prompt')}; {cite(every_target(targets, 'logits'), 'prompts')}"
    verdict = c.get("verdict") or {}
    status = verdict.get("status") if verdict.get("status") in VERDICT_STATUSES else UNKNOWN
    return {
        "target": data.name, "available": True, "reason": "",
        "verdict": VERDICT_LABEL[status], "reasons": list(verdict.get("reasons") or []),
        "inconclusive": list(verdict.get("inconclusive") or []), "notes": list(verdict.get("notes") or []),
        "kld_basis": c.get("kld_basis") or UNKNOWN,
        "lower_bound": bool(c.get("kld_is_lower_bound")),
        "tie_tolerance": show(c.get("tie_tolerance")),
        "metrics": table(["Metric", "Value", "Anchor"],
                         [[label, metric_text(key, c.get(key)), anchor] for key, label, anchor in METRICS],
                         cite(path, *(key for key, _, _ in METRICS))),
        "checks": table(["Check", "Metric", "Value", "Op", "Threshold", "Status", "Anchor"],
                        [_check_row(check) for check in verdict.get("checks") or []], cite(path, "verdict.checks")),
        "per_prompt": per_prompt_table(c.get("per_prompt") or [], prompts, per_prompt_source),
    }


def _check_row(check: dict) -> list[str]:
    key = check.get("metric") or check.get("name", "")
    value = check.get("value_text") or metric_text(key, check.get("value"))  # value_text: NaN / inf, which JSON lacks
    if check.get("lower_bound") and check.get("value") is not None:
        value += " (lower bound)"
    return [check.get("name", UNKNOWN), key, value, check.get("op", ""), metric_text(key, check.get("threshold")),
            VERDICT_LABEL.get(check.get("status"), UNKNOWN), check.get("anchor", "")]


def per_prompt_table(per_prompt: list[dict], prompts: list[str], source: str) -> dict:
    if not per_prompt:
        return table(["#", "Prompt"], [], source)
    present = {key for row in per_prompt for key in row}
    columns = list(dict.fromkeys(key for key, _ in PER_PROMPT_COLUMNS if key in present))
    labels = dict(PER_PROMPT_COLUMNS)
    rows = [[str(row.get("index", position)), clip(_prompt(prompts, row.get("index", position)))]
            + [metric_text(key, row.get(key)) for key in columns] for position, row in enumerate(per_prompt)]
    return table(["#", "Prompt"] + [labels[key] for key in columns], rows, source)


def _prompt(prompts: list[str], index: Any) -> str:
    try:
        return prompts[int(index)]
    except (IndexError, TypeError, ValueError):
        return UNKNOWN
