"""Snakemake adapter: rule compare_accuracy -> portcheck.accuracy.compare (item by item against the reference)."""

from portcheck.accuracy.compare import compare_accuracy_files
from portcheck.workflow.script import run_script


def main(smk):
    p = smk.params
    compare_accuracy_files(smk.input.reference, smk.input.target, smk.output[0], p.rtol, p.alpha, p.in_verdict)


if __name__ == "__main__":
    run_script(snakemake, main)  # noqa: F821 - injected by Snakemake
