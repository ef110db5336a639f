"""Snakemake adapter: rule render_report -> portcheck.report (paths stay workdir-relative: the report lists them)."""

from portcheck.report import build_context, render_report
from portcheck.smk import run_script

KINDS = ("env", "logits", "adaptation", "determinism", "samples")


def main(smk):
    p = smk.params
    artifacts = {
        "model": p.model,
        "reference": p.reference,
        "manifest": smk.input.manifest,
        "targets": {t: {kind: f"{p.results}/{t}/{p.files[kind]}" for kind in KINDS} for t in p.targets},
        "compare": dict(zip(p.compared, smk.input.compare)),
        "plots": dict(p.plots),
        "configfile": p.configfile,
    }
    render_report(smk.input.template, smk.output[0], build_context(artifacts, dict(p.config)))


if __name__ == "__main__":
    run_script(snakemake, main)  # noqa: F821 - injected by Snakemake
