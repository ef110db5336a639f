"""Snakemake adapter: rule compare_vision -> portcheck.vision.compare.compare_vision."""

from portcheck.atomic import write_json
from portcheck.vision.compare import compare_vision, not_run
from portcheck.workflow.script import run_script


def main(smk):
    if smk.params.not_wired:
        write_json(smk.output[0], not_run(smk.params.not_wired))
        return
    i = smk.input
    floor = (i.floor_vision, i.floor_vision_blocks) if "floor_vision" in i.keys() else None
    write_json(smk.output[0], compare_vision(i.reference_vision, i.target_vision, i.reference_vision_blocks,
                                             i.target_vision_blocks, dict(smk.params.thresholds),
                                             smk.params.tie_tolerance, dict(smk.params.localise), floor,
                                             dict(smk.params.positions), smk.params.no_floor or ""))


if __name__ == "__main__":
    run_script(snakemake, main)  # noqa: F821 - injected by Snakemake
