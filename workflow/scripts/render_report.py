"""Snakemake adapter: rule render_report -> portcheck.report.render (paths stay workdir-relative: the report
lists them)."""

from portcheck.artifacts import OPTIONAL_COMPARISONS, REPORTED_KINDS, TARGET_FILES
from portcheck.benchmarks.plan import benched_targets, not_benchmarked
from portcheck.report.history import record_and_section
from portcheck.report.render import build_context, render_report
from portcheck.workflow.script import run_script


def main(smk):
    p = smk.params
    artifacts = {
        "model": p.model,
        "reference": p.reference,
        "manifest": smk.input.manifest,
        "context": smk.input.context[0] if smk.input.context else None,
        "mtp_head": smk.input.mtp_head[0] if smk.input.mtp_head else None,
        # The inputs, not paths rebuilt from params: with a storage plugin they are the local copies.
        "targets": {t: {kind: _input(smk.input.per_target, t, kind) for kind in REPORTED_KINDS} for t in p.targets},
        "compare": dict(zip(p.compared, smk.input.compare)),
        # The optional comparisons: None where the config turned one off (the report says so).
        **{kind: None if kind in p.turned_off else comparisons(p, kind, getattr(smk.input, kind))
           for kind in OPTIONAL_COMPARISONS},
        "modes": {"runs": dict(zip(p.mode_runs, smk.input.modes)), "not_run": list(p.mode_runs_not_run),
                  "enabled": bool(p.config["modes"]["enabled"])},
        "plots": dict(p.plots),
        "configfile": p.configfile,
    }
    artifacts["turned_off_by"] = turned_off_by(p)
    for t in p.targets:
        artifacts["targets"][t]["bench_checks"] = None
    for t, path in zip(benched_targets(p.targets, p.reference, p.config["bench"]), smk.input.bench_checks):
        artifacts["targets"][t]["bench_checks"] = str(path)
    # The serving check for vllm targets only (None: not applicable).
    for t in p.targets:
        artifacts["targets"][t]["serve"] = None
    for t, path in zip(p.served, smk.input.serve):
        artifacts["targets"][t]["serve"] = str(path)
    context = build_context(artifacts, dict(p.config))
    context["history"] = record_and_section(p.history, artifacts, dict(p.config)["history"])
    render_report(smk.input.template, smk.output[0], context)


def turned_off_by(p) -> dict:
    """{target: {kind: the setting that leaves it out}}, the reason the report gives: the benchmarks (bench.reference),
    the accuracy comparison (accuracy.floor), the determinism test and samples (determinism.reference, ...)."""
    unbenched = not_benchmarked(p.targets, p.reference, p.config["bench"])
    off = {"bench": unbenched, "bench_checks": unbenched, "accuracy_compare": dict(p.not_evaluated),
           **{kind: dict(targets) for kind, targets in dict(p.not_measured).items()}}
    by_target = {}
    for kind, targets in off.items():
        for t, why in targets.items():
            by_target.setdefault(t, {})[kind] = why
    return by_target


def comparisons(p, kind, files):
    """{target: file} of an optional comparison; None for a target the config leaves out (accuracy.floor)."""
    found = dict(zip(p.compared_for[kind], files))
    return {t: found.get(t) for t in p.compared}


def _input(files, target, kind):
    """The input file of `kind` for `target`; None where the rule does not ask for it (an unbenchmarked target's
    bench.json)."""
    suffix = f"/{target}/{TARGET_FILES[kind]}"
    return next((str(f) for f in files if str(f).endswith(suffix)), None)


if __name__ == "__main__":
    run_script(snakemake, main)  # noqa: F821 - injected by Snakemake
