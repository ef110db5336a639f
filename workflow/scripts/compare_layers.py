"""Snakemake adapter: rule compare_layers -> portcheck.compare.layers.compare_layers_files."""

from portcheck.atomic import write_json
from portcheck.compare.layers import compare_layers_files
from portcheck.workflow.script import run_script


def main(smk):
    floor = smk.input.get("floor")  # absent where the floor target is disabled, or is this target
    write_json(smk.output[0], compare_layers_files(smk.input.reference, smk.input.target, dict(smk.params.layers),
                                                   smk.params.bucket, floor, smk.params.no_floor))


if __name__ == "__main__":
    run_script(snakemake, main)  # noqa: F821 - injected by Snakemake
