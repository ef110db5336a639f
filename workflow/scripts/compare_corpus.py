"""Snakemake adapter: rule compare_corpus -> portcheck.compare.positions.compare_corpus_files."""

from portcheck.atomic import write_json
from portcheck.compare.positions import compare_corpus_files
from portcheck.workflow.script import run_script


def main(smk):
    p = smk.params
    result = compare_corpus_files(smk.input.reference, smk.input.target, dict(p.thresholds), p.tie_tolerance,
                                  dict(p.positions), p.score_from, dict(p.storage),
                                  smk.input.get("floor"), p.no_floor or "")
    write_json(smk.output[0], result)


if __name__ == "__main__":
    run_script(snakemake, main)  # noqa: F821 - injected by Snakemake
