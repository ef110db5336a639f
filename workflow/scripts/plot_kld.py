"""Snakemake adapter: rule plot_kld -> portcheck.report.plots."""

from portcheck.report.plots import plot_kld_distribution, plot_kld_per_position
from portcheck.workflow.script import run_script


def main(smk):
    compare = dict(zip(smk.params.targets, smk.input.compare))
    plot_kld_per_position(compare, smk.output.per_position)
    plot_kld_distribution(compare, smk.output.distribution)


if __name__ == "__main__":
    run_script(snakemake, main)  # noqa: F821 - injected by Snakemake
