"""Section Engine modes: each <target>+<mode> run (compare/<run>.mode.json): the engine counters that prove the
mode ran, its decode-path KLD against the reference, the same target's base configuration on the same workload,
the mode against the base directly, and the verdict. A run whose counters did not prove the mode is not run."""

from __future__ import annotations

from portcheck.artifacts import read_artifact
from portcheck.modes.catalog import MODES
from portcheck.report.format import NOT_RUN, VERDICT_LABEL, decimal, pct, sci, speedup, table
from portcheck.report.sections.positions import decode_batches_text, floor_text, ratio_text
from portcheck.report.sources import cite

HEADER = ["Run", "Proof (engine counters)", "Decode KLD vs reference (basis)", "Base: decode KLD vs reference (basis)",
          "Decode mode / base (bounds)", "Decode vs base: KLD, top-1", "Greedy tokens = base",
          "Prefill KLD vs reference (growth)", "Prefill mode / base (bounds)", "Prefill / bf16 floor (bounds)",
          "Decoded: run; base", "Verdict"]
NO_FIGURES = ["—"] * (len(HEADER) - 3)  # a row without a comparison: run, what it says, these, its verdict


def modes_section(modes: dict | None) -> dict:
    """modes: {"enabled", "runs": {run: compare path}, "not_run": [runs whose target is not enabled]}."""
    if not modes or not modes.get("enabled"):
        return {"enabled": False}
    compared = {run: read_artifact(path, "mode_compare") for run, path in modes["runs"].items()}
    rows = [_row(run, c) for run, c in compared.items()]
    rows += [[run, "target not enabled", *NO_FIGURES, VERDICT_LABEL[NOT_RUN]] for run in modes["not_run"]]
    failures = [f"{run}: {reason}" for run, c in compared.items()
                for reason in (c.get("verdict") or {}).get("reasons", [])]
    inconclusive = [f"{run}: {reason}" for run, c in compared.items()
                    for reason in (c.get("verdict") or {}).get("inconclusive", [])]
    workload = next((c["workload"] for c in compared.values() if c.get("workload")), None)
    sources = ", ".join(cite(path, "proof", "vs_reference", "base_vs_reference", "vs_base", "prefill", "batches")
                        for path in modes["runs"].values())
    by_target: dict[str, dict[str, str]] = {}
    for run, c in compared.items():
        by_target.setdefault(c.get("target") or run.split("+")[0], {})[c.get("mode") or run] = c.get("status", NOT_RUN)
    for run in modes["not_run"]:
        by_target.setdefault(run.split("+")[0], {})[run.split("+")[1]] = NOT_RUN
    return {"enabled": True, "table": table(HEADER, rows, sources or "no mode run is configured (modes.runs)"),
            "by_target": by_target,
            "failures": failures, "inconclusive": inconclusive, "workload": workload,
            "modes": [{"name": name, "description": text} for name, text in MODES.items()],
            "mtp": mtp_tables(compared, modes)}


def _row(run: str, c: dict) -> list:
    if "vs_reference" not in c:  # not run, or not proven (e.g. compiled, no graph replay)
        return [run, c.get("reason") or c.get("proof") or NOT_RUN, *NO_FIGURES,
                VERDICT_LABEL.get(c.get("status"), VERDICT_LABEL[NOT_RUN])]
    mode, base, versus = c["vs_reference"], c["base_vs_reference"], c["vs_base"]
    prefill = c.get("prefill")
    return [run, c.get("proof"), _kld(mode), _kld(base), ratio_text(versus),
            f"{sci(versus.get('kld_vs_base_mean'))} ({versus.get('kld_vs_base_basis') or '—'}), "
            f"{pct(versus.get('top1_vs_base'))}",
            f"{versus['tokens_equal']} of {versus['sequences']}",
            f"{_kld(prefill)} (growth {ratio_text(prefill['growth'])})" if prefill else "not scored",
            ratio_text(prefill["vs_base"]) if prefill else "—", floor_text(prefill.get("vs_floor")) if prefill else "—",
            _batches(c.get("batches") or {}),
            VERDICT_LABEL.get(c["status"], c["status"])]


def _batches(batches: dict) -> str:
    """How the run and its base decoded the workload, from their decode dumps."""
    return "; ".join(decode_batches_text(batches.get(side)) for side in ("mode", "base"))


def _kld(comparison: dict) -> str:
    overall = comparison["overall"]
    return f"{sci(overall.get('kld_mean'))} ± {sci(overall.get('kld_mean_stderr'))} " \
           f"({comparison.get('kld_basis') or overall.get('kld_basis') or 'basis unknown'})"


MTP_HEADER = ["Run", "Drafts (draft tokens)", "Accepted", "Acceptance rate", "Per draft position",
              "Reference MTP per position (rounds replayed)", "Mean acceptance length", "Draft tokens per accepted",
              "Greedy tokens = base (first differing step)", "Decode tok/s base → mtp", "Acceptance check"]


def mtp_tables(compared: dict[str, dict], modes: dict) -> dict | None:
    """The mtp runs' acceptance (vLLM's spec-decode counters), losslessness against the base, speed, and acceptance
    by decode steps (where an acceptance that falls after several rounds shows)."""
    runs = {run: c for run, c in compared.items() if c.get("mode") == "mtp" and c.get("drafts")}
    if not runs:
        return None
    sources = ", ".join(cite(modes["runs"][run], "drafts", "per_position", "reference_acceptance",
                             "acceptance_by_steps", "vs_base", "generate_seconds", "base_generate_seconds", "verdict")
                        for run in runs)
    rows = [_mtp_row(run, c) for run, c in runs.items()]
    bounds = next((c["acceptance_by_steps"] for c in runs.values() if c.get("acceptance_by_steps")), [])
    by_steps = [[run, *[f"{pct(b['acceptance_rate'])} of {b['draft_tokens']}" for b in c.get("acceptance_by_steps")
                        or []]] for run, c in runs.items()]
    return {"table": table(MTP_HEADER, rows, sources),
            "by_steps": table(["Run", *[f"steps {b['steps']}" for b in bounds]], by_steps, sources) if bounds
            else None}


def _mtp_row(run: str, c: dict) -> list:
    versus = c.get("vs_base") or {}
    differ = [str(d) for d in versus.get("first_difference") or [] if d is not None]
    lossless = (f"{versus['tokens_equal']} of {versus['sequences']}"
                + (f" (first differing step {', '.join(differ)})" if differ else "")) if "tokens_equal" in versus \
        else "unknown"
    verdict = c.get("verdict") or {}
    check = "; ".join(r for r in verdict.get("reasons", []) + verdict.get("inconclusive", [])
                      if r.startswith("acceptance:")) or "pass"
    return [run, f"{c['drafts']} ({c.get('draft_tokens')})", c.get("accepted"), pct(c.get("acceptance_rate")),
            ", ".join(pct(r) for r in c.get("per_position") or []) or "not reported",
            _reference(c.get("reference_acceptance")), decimal(c.get("mean_accepted_length")),
            decimal(c.get("draft_tokens_per_accepted"), missing="none accepted"), lossless, _speed(c), check]


def _reference(reference: dict | None) -> str:
    if not reference:
        return "not measured"
    if not reference.get("per_position"):
        return f"not measured: {reference.get('reason', 'no round replayed')}"
    return f"{', '.join(pct(r) for r in reference['per_position'])} ({reference['drafts']} rounds)"


def _speed(c: dict) -> str:
    """Decode tokens/s of the mode workload generated as one batch, base configuration and with MTP (one run each),
    and the speed-up."""
    workload, base, mtp = c.get("workload") or {}, c.get("base_generate_seconds"), c.get("generate_seconds")
    if not (base and mtp and workload):
        return "unknown"
    tokens = workload["prompts"] * workload["max_tokens"]
    return f"{tokens / base:.1f} → {tokens / mtp:.1f} ({speedup(base / mtp)})"
