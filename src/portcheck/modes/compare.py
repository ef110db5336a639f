"""Rule compare_mode: one mode run judged where it acts. On the decode path, with the mode workload:
- against the reference (its teacher-forced scores of the run's own tokens, rule score_mode), by bucket of
  decode steps with the growth check, as the decode-path comparison does;
- against the same target in its base configuration on the same workload (decoded in the dump's engine start):
  the mode's KLD against the base's (compare/statistics.py, prompts paired: a mode may not be worse than the
  base beyond growth_max), and directly, step by step while the greedy tokens agree (KLD(base || mode), top-1
  agreement, the first step whose token differs).
On the prefill path (chunked prefill and compiled graphs change it; vLLM does not read the prefix cache for prompt
log-probs), where the corpus is scored: the run's corpus windows against the reference's, by bucket with the growth
check, against the base configuration's corpus KLD and against the bf16 floor's on the same windows (the checks
`make calibrate` measures for the chunked mode: a fault in the base and the mode alike passes "vs base").
A run whose counters did not prove the mode is "not run", never a pass."""

from __future__ import annotations

from typing import Any

import numpy as np

from portcheck.artifacts import read_artifact
from portcheck.compare import compact as c
from portcheck.compare import metrics as m
from portcheck.compare.compare import json_ready, kld_basis
from portcheck.compare.positions import compare_by_position, position_verdict, sequence_side, vs_floor
from portcheck.compare.statistics import binomial_lower_tail, ratio_check
from portcheck.dump.logits_file import Dump, read_dump


MTP_FIGURES = ("drafts", "draft_tokens", "accepted", "acceptance_rate", "mean_accepted_length", "per_position",
               "draft_tokens_per_accepted", "acceptance_by_steps", "generate_seconds")


def compare_mode_files(paths: dict, thresholds: dict, tie_tolerance: float, positions: dict,
                       score_from: int = 0, mtp_acceptance: dict | None = None, no_floor: str = "") -> dict[str, Any]:
    """paths: proof (<mode>.json), mode and base (decode dumps), mode_reference and base_reference (score_mode);
    where the corpus is scored also corpus (the run's windows), corpus_reference (the reference's), base_corpus
    (the base configuration's corpus comparison, compare/<target>.corpus.json) and floor_corpus (the bf16 floor's,
    compare/cpu-hf-bf16.corpus.json; without it, `no_floor` says why the vs-floor check did not run).
    mtp_acceptance: the config's modes.mtp_acceptance (golden per-position rates, tolerance) an mtp run is held
    to."""
    proof = read_artifact(paths["proof"], "mode_proof")
    head = {key: proof.get(key) for key in ("run", "target", "mode", "description", "proof", "alone_vs_batch",
                                            "decode_seconds", "workload", *MTP_FIGURES)}
    if proof.get("status") != "ran":  # "inconclusive": the mode acted, unproven where it matters (graph replay)
        return {**head, "status": "inconclusive" if proof.get("status") == "inconclusive" else "not run",
                "reason": proof.get("proof")}
    mode, base = read_dump(paths["mode"]), read_dump(paths["base"])
    mode_vs_ref = compare_by_position(read_dump(paths["mode_reference"]), mode, thresholds, tie_tolerance, positions)
    base_vs_ref = compare_by_position(read_dump(paths["base_reference"]), base, thresholds, tie_tolerance, positions)
    versus_base = mode_vs_base(mode_vs_ref, base_vs_ref, positions)
    direct = against_base(base, mode)
    head["batches"] = {name: (dump.meta.get("decode") or {}).get("batches") for name, dump in (("mode", mode),
                                                                                               ("base", base))}
    parts = {"decode": position_verdict(mode_vs_ref["pooled"], mode_vs_ref["growth"], mode_vs_ref["nonfinite"],
                                        {"mode vs base": versus_base})}
    prefill = None
    if "corpus" in paths:
        prefill = prefill_check(paths, thresholds, tie_tolerance, positions, score_from, no_floor)
        parts["prefill"] = prefill["verdict"]
    if proof["mode"] == "mtp":
        reference = read_artifact(paths["mtp_reference"], "mode_mtp_reference") if "mtp_reference" in paths \
            else None
        parts["acceptance"] = acceptance_verdict(proof.get("per_position"), mtp_acceptance or {}, reference,
                                                 proof.get("drafts"))
        head["reference_acceptance"] = reference
    verdict = _joined(parts)
    return json_ready({
        **head, "status": verdict["status"], "verdict": verdict, "vs_reference": mode_vs_ref, "prefill": prefill,
        "base_vs_reference": {key: base_vs_ref[key] for key in ("overall", "growth", "verdict", "kld_basis")},
        "vs_base": {**versus_base, **direct}, "base_decode_seconds": base.meta.get("run_seconds"),
        "base_generate_seconds": proof.get("base_generate_seconds"),
        "paths": {key: str(value) for key, value in paths.items()},
    })


def acceptance_verdict(per_position: list[float] | None, rule: dict, reference: dict | None = None,
                       drafts: int | None = None, alpha: float = 0.05) -> dict[str, list[str]]:
    """vllm-ascend's e2e MTP rule: each draft position's acceptance rate at least its golden rate minus the
    tolerance; a position under that line fails only where its `drafts` make it significant (exact one-sided
    binomial test against the line at `alpha`; else inconclusive: a few dozen drafts cannot tell 0.65 from 0.71).
    The golden rates: the config's, else the reference MTP's per position (rule score_mtp: vLLM's rounds replayed
    with the checkpoint's MTP weights on the reference's hidden states along the run's tokens). Without either, or
    where golden minus tolerance is not above 0 (a head that accepts nothing cannot be caught accepting less), the
    acceptance is stated, not judged: inconclusive (an MTP port accepting nothing, vllm-ascend #9871, would
    otherwise pass)."""
    verdict: dict[str, list[str]] = {"reasons": [], "inconclusive": [], "notes": []}
    golden, tolerance = rule.get("golden"), float(rule.get("tolerance", 0.06))
    replayed = (reference or {}).get("per_position")
    if not golden and replayed:
        golden = replayed
        verdict["notes"].append(f"golden: the reference MTP's acceptance per position "
                                f"{', '.join(f'{g:.1%}' for g in golden)} ({reference['drafts']} rounds replayed)")
    if not golden:
        why = (reference or {}).get("reason") or "no golden per-position rates (modes.mtp_acceptance.golden)"
        verdict["inconclusive"].append(f"acceptance not judged: {why}")
    elif all(gold - tolerance <= 0 for gold in golden):
        verdict["inconclusive"].append(f"acceptance not judged: golden {', '.join(f'{g:.1%}' for g in golden)} "
                                       f"minus {tolerance:.0%} leaves nothing a port could fall under (an "
                                       "untrained MTP head?)")
    elif not per_position or len(per_position) < len(golden):
        verdict["inconclusive"].append(f"vLLM reported no per-position acceptance for {len(golden)} positions "
                                       f"(spec_decode_num_accepted_tokens_per_pos: {per_position})")
    else:
        for i, (rate, gold) in enumerate(zip(per_position, golden)):
            line = gold - tolerance
            if rate >= line:
                continue
            text = f"draft position {i + 1} accepted {rate:.1%}, under its golden {gold:.1%} minus {tolerance:.0%}"
            if drafts is None:
                verdict["reasons"].append(text)
                continue
            p_value = binomial_lower_tail(round(rate * drafts), drafts, line)
            (verdict["reasons"] if p_value < alpha else verdict["inconclusive"]).append(
                f"{text} (exact binomial p = {p_value:.2g} over {drafts} drafts"
                + ("" if p_value < alpha else f": too few drafts to tell at {alpha:g}") + ")")
    return verdict


def mode_vs_base(mode_result: dict, base_result: dict, positions: dict) -> dict[str, Any]:
    """The mode's KLD against the base configuration's on the same sequences (paired): a mode may not be worse than
    the base beyond growth_max."""
    return ratio_check(sequence_side(mode_result), sequence_side(base_result), True, positions["growth_max"],
                       positions["growth_floor"], positions.get("confidence", 0.95), "in the mode",
                       "the base configuration's")


def _joined(parts: dict[str, dict]) -> dict[str, Any]:
    """One verdict from the decode and prefill ones, each reason prefixed with its path."""
    joined = {key: [f"{path}: {text}" for path, v in parts.items() for text in v[key]]
              for key in ("reasons", "inconclusive", "notes")}
    status = "fail" if joined["reasons"] else "inconclusive" if joined["inconclusive"] else "pass"
    return {"status": status, **joined}


def prefill_check(paths: dict, thresholds: dict, tie_tolerance: float, positions: dict, score_from: int,
                  no_floor: str = "") -> dict[str, Any]:
    """The corpus windows scored in the mode against the reference's, pooled and with the growth check (a state
    lost between prefill chunks grows past the first chunk), against the base configuration's KLD and against the
    bf16 floor's on the same windows (the floor target's corpus comparison, paired by window, as the target's own
    corpus comparison holds it: compare/positions.py)."""
    result = compare_by_position(read_dump(paths["corpus_reference"]), read_dump(paths["corpus"]), thresholds,
                                 tie_tolerance, positions, score_from)
    ratios = {"mode vs base": mode_vs_base(result, read_artifact(paths["base_corpus"], "corpus_compare"), positions)}
    if "floor_corpus" in paths:
        floor = read_artifact(paths["floor_corpus"], "corpus_compare")
        ratios["vs bf16 floor"] = vs_floor(result, floor, str(paths["floor_corpus"]), positions)
    elif no_floor:
        ratios["vs bf16 floor"] = {"status": "not run", "reason": no_floor}
    verdict = position_verdict(result["pooled"], result["growth"], result["nonfinite"], ratios)
    return {**{key: result[key] for key in ("overall", "buckets", "growth", "windows", "window_length", "kld_basis")},
            "verdict": verdict, "vs_base": ratios["mode vs base"], "vs_floor": ratios.get("vs bf16 floor"),
            "base": str(paths["base_corpus"])}


def against_base(base: Dump, mode: Dump) -> dict[str, Any]:
    """The mode's steps against the base's, each sequence up to and including the first step whose greedy token
    differs (later steps follow other tokens): KLD(base || mode) and top-1 agreement; exact where both dumps hold
    whole rows, else from compact records (estimate or lower bound: `kld_vs_base_basis`)."""
    first_differences, klds, agree = [], [], []
    for i in range(base.num_prompts):
        base_tokens, mode_tokens = list(map(int, base.greedy_ids[i])), list(map(int, mode.greedy_ids[i]))
        differ = next((t for t, (b, x) in enumerate(zip(base_tokens, mode_tokens)) if b != x), None)
        first_differences.append(differ)
        rows = len(base_tokens) if differ is None else differ + 1
        if base.kind == mode.kind == "full":
            base_lp, mode_lp = m.log_softmax(base.logits[i][:rows]), m.log_softmax(mode.logits[i][:rows])
            klds.append(m.kld_rows(base_lp, mode_lp))
            agree.append(base_lp.argmax(axis=1) == mode_lp.argmax(axis=1))
        elif "topk" not in (base.kind, mode.kind):
            a, b = (records.rows(slice(0, rows)) for records in c.paired_records(base, mode, i))
            lower, estimate = c.kld_compact(a, b)
            klds.append(lower if estimate is None else estimate)
            agree.append(a.topk_ids[:, 0] == b.topk_ids[:, 0])
    kld = np.concatenate(klds) if klds else np.zeros(0)
    return {"tokens_equal": sum(d is None for d in first_differences), "sequences": base.num_prompts,
            "first_difference": first_differences,
            "kld_vs_base_mean": float(kld.mean()) if kld.size else None,
            "kld_vs_base_max": float(kld.max()) if kld.size else None,
            "top1_vs_base": float(np.concatenate(agree).mean()) if agree else None,
            "steps_compared": int(kld.size), "kld_vs_base_basis": kld_basis(base, mode) if kld.size else None}
