"""Snakemake adapter: rule compare_decode -> portcheck.compare.positions.compare_decode_files."""

from portcheck.atomic import write_json
from portcheck.compare.positions import compare_decode_files
from portcheck.workflow.script import run_script


def main(smk):
    p = smk.params
    result = compare_decode_files(smk.input.reference, smk.input.target, dict(p.thresholds), p.tie_tolerance,
                                  dict(p.positions), smk.input.prefill, smk.input.get("floor"), p.no_floor or "")
    write_json(smk.output[0], result)


if __name__ == "__main__":
    run_script(snakemake, main)  # noqa: F821 - injected by Snakemake
