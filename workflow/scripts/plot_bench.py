"""Snakemake adapter: rule plot_bench -> portcheck.report.plots (throughput against batch size, latency percentiles)."""

from portcheck.report.plots import plot_latency_percentiles, plot_throughput_vs_batch
from portcheck.workflow.script import run_script


def main(smk):
    bench = dict(zip(smk.params.targets, smk.input.bench))
    plot_throughput_vs_batch(bench, smk.output.throughput)
    plot_latency_percentiles(bench, smk.output.latency)


if __name__ == "__main__":
    run_script(snakemake, main)  # noqa: F821 - injected by Snakemake
