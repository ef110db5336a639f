"""Snakemake adapter: rule plot_serve -> portcheck.report.plots (the serving sweep: throughput and TTFT against load)."""

from portcheck.report.plots import plot_serve_sweep
from portcheck.workflow.script import run_script


def main(smk):
    plot_serve_sweep(dict(zip(smk.params.targets, smk.input.serve)), smk.output[0])


if __name__ == "__main__":
    run_script(snakemake, main)  # noqa: F821 - injected by Snakemake
