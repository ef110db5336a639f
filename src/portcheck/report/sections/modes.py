"""Section Engine modes: each <target>+<mode> run (compare/<run>.mode.json): the engine counters that prove the
mode ran, its decode-path KLD against the reference, the same target's base configuration on the same workload,
the mode against the base directly, and the verdict. A run whose counters did not prove the mode is not run."""

from __future__ import annotations

from portcheck.artifacts import read_artifact
from portcheck.modes.catalog import MODES
from portcheck.report.format import NOT_RUN, VERDICT_LABEL, pct, ratio, sci, table
from portcheck.report.sections.positions import ratio_text
from portcheck.report.sources import cite

HEADER = ["Run", "Proof (engine counters)", "Decode KLD vs reference (basis)", "Base: decode KLD vs reference (basis)",
          "Decode mode / base (bounds)", "Decode vs base: KLD, top-1", "Greedy tokens = base",
          "Prefill KLD vs reference (growth)", "Prefill mode / base (bounds)", "Verdict"]


def modes_section(modes: dict | None) -> dict:
    """modes: {"enabled", "runs": {run: compare path}, "not_run": [runs whose target is not enabled]}."""
    if not modes or not modes.get("enabled"):
        return {"enabled": False}
    compared = {run: read_artifact(path, "mode_compare") for run, path in modes["runs"].items()}
    rows = [_row(run, c) for run, c in compared.items()]
    rows += [[run, "target not enabled", *["—"] * 7, VERDICT_LABEL[NOT_RUN]] for run in modes["not_run"]]
    failures = [f"{run}: {reason}" for run, c in compared.items()
                for reason in (c.get("verdict") or {}).get("reasons", [])]
    inconclusive = [f"{run}: {reason}" for run, c in compared.items()
                    for reason in (c.get("verdict") or {}).get("inconclusive", [])]
    workload = next((c["workload"] for c in compared.values() if c.get("workload")), None)
    sources = ", ".join(cite(path, "proof", "vs_reference", "base_vs_reference", "vs_base", "prefill")
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
            "mtp": [_mtp(run, c) for run, c in compared.items() if c.get("mode") == "mtp" and c.get("acceptance_rate")
                    is not None]}


def _row(run: str, c: dict) -> list:
    if "vs_reference" not in c:  # not run, or not proven (e.g. compiled, no graph replay)
        return [run, c.get("reason") or c.get("proof") or NOT_RUN, *["—"] * 7,
                VERDICT_LABEL.get(c.get("status"), VERDICT_LABEL[NOT_RUN])]
    mode, base, versus = c["vs_reference"], c["base_vs_reference"], c["vs_base"]
    prefill = c.get("prefill")
    return [run, c.get("proof"), _kld(mode), _kld(base), ratio_text(versus),
            f"{sci(versus.get('kld_vs_base_mean'))} ({versus.get('kld_vs_base_basis') or '—'}), "
            f"{pct(versus.get('top1_vs_base'))}",
            f"{versus['tokens_equal']} of {versus['sequences']}",
            f"{_kld(prefill)} (growth {ratio_text(prefill['growth'])})" if prefill else "not scored",
            ratio_text(prefill["vs_base"]) if prefill else "—", VERDICT_LABEL.get(c["status"], c["status"])]


def _kld(comparison: dict) -> str:
    overall = comparison["overall"]
    return f"{sci(overall.get('kld_mean'))} ± {sci(overall.get('kld_mean_stderr'))} " \
           f"({comparison.get('kld_basis') or overall.get('kld_basis') or 'basis unknown'})"


def _mtp(run: str, c: dict) -> dict:
    return {"run": run, "acceptance_rate": pct(c.get("acceptance_rate")),
            "mean_accepted_length": f"{c.get('mean_accepted_length'):.2f}",
            "speedup": ratio(c["base_decode_seconds"] / c["decode_seconds"])
            if c.get("decode_seconds") and c.get("base_decode_seconds") else "unknown"}
