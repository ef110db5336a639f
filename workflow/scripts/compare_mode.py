"""Snakemake adapter: rule compare_mode -> portcheck.modes.compare.compare_mode_files."""

from portcheck.atomic import write_json
from portcheck.modes.compare import compare_mode_files
from portcheck.workflow.script import run_script


def main(smk):
    keys = ("proof", "mode", "mode_reference", "base", "base_reference", "corpus", "corpus_reference", "base_corpus",
            "floor_corpus", "mtp_reference")
    paths = {key: smk.input[key] for key in keys if key in smk.input.keys()}
    p = smk.params
    write_json(smk.output[0], compare_mode_files(paths, dict(p.thresholds), p.tie_tolerance, dict(p.positions),
                                                 p.score_from, dict(p.mtp_acceptance), p.no_floor or ""))


if __name__ == "__main__":
    run_script(snakemake, main)  # noqa: F821 - injected by Snakemake
