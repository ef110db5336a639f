"""Snakemake adapter: rule compare_corpus -> portcheck.compare.corpus.compare_corpus_files."""

from portcheck.atomic import write_json
from portcheck.compare.corpus import compare_corpus_files
from portcheck.workflow.script import run_script


def main(smk):
    result = compare_corpus_files(smk.input.reference, smk.input.target, dict(smk.params.thresholds),
                                  smk.params.tie_tolerance, dict(smk.params.corpus))
    write_json(smk.output[0], result)


if __name__ == "__main__":
    run_script(snakemake, main)  # noqa: F821 - injected by Snakemake
