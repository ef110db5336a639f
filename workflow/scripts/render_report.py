"""Snakemake adapter: rule render_report -> portcheck.report (paths stay workdir-relative: the report lists them)."""

from portcheck.history import record_and_section
from portcheck.report import build_context, render_report
from portcheck.smk import run_script

KINDS = ("env", "logits", "adaptation", "determinism", "samples")


def main(smk):
    p = smk.params
    artifacts = {
        "model": p.model,
        "reference": p.reference,
        "manifest": smk.input.manifest,
        # The inputs, not paths rebuilt from params: with a storage plugin they are the local copies.
        "targets": {t: {kind: _input(smk, t, p.files[kind]) for kind in KINDS} for t in p.targets},
        "compare": dict(zip(p.compared, smk.input.compare)),
        "plots": dict(p.plots),
        "configfile": p.configfile,
    }
    # Benchmarks for every target; the serving check for vllm targets only (None: not applicable).
    for t, path in zip(p.targets, smk.input.bench):
        artifacts["targets"][t]["bench"] = str(path)
        artifacts["targets"][t]["serve"] = None
    for t, path in zip(p.served, smk.input.serve):
        artifacts["targets"][t]["serve"] = str(path)
    context = build_context(artifacts, dict(p.config))
    context["history"] = record_and_section(p.history, artifacts, dict(p.config).get("history") or {})
    render_report(smk.input.template, smk.output[0], context)


def _input(smk, target, name):
    suffix = f"/{target}/{name}"
    return next(str(f) for f in smk.input.per_target if str(f).endswith(suffix))


if __name__ == "__main__":
    run_script(snakemake, main)  # noqa: F821 - injected by Snakemake
