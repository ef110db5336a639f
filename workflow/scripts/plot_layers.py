"""Snakemake adapter: rule plot_layers -> portcheck.report.plots.plot_layer_errors."""

from portcheck.report.plots import plot_layer_errors
from portcheck.workflow.script import run_script


def main(smk):
    plot_layer_errors(dict(zip(smk.params.targets, smk.input.layers)), smk.output[0])


if __name__ == "__main__":
    run_script(snakemake, main)  # noqa: F821 - injected by Snakemake
