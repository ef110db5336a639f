"""Snakemake adapter: rule check_benchmarks -> portcheck.benchmarks.checks.write_bench_checks."""

from portcheck.benchmarks.checks import write_bench_checks
from portcheck.workflow.script import run_script


def main(smk):
    hardware = dict(smk.params.hardware)
    write_bench_checks(smk.input.bench, smk.output[0], hardware["name"], hardware["peaks"], smk.params.tolerance)


if __name__ == "__main__":
    run_script(snakemake, main)  # noqa: F821 - injected by Snakemake
