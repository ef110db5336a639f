"""Snakemake adapter: rule plot_long_context -> portcheck.report.plots.plot_kld_long_context."""

from portcheck.report.plots import plot_kld_long_context
from portcheck.workflow.script import run_script


def main(smk):
    plot_kld_long_context(dict(zip(smk.params.targets, smk.input.corpus)), smk.output[0])


if __name__ == "__main__":
    run_script(snakemake, main)  # noqa: F821 - injected by Snakemake
