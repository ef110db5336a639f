"""Snakemake adapter: rule dump_vision -> portcheck.vision.run.dump_vision."""

from portcheck.engines.settings import EngineSettings
from portcheck.vision.run import dump_vision
from portcheck.workflow.script import run_script


def main(smk):
    settings = dict(smk.params.settings)
    settings["threads"] = settings["threads"] or smk.threads
    dump_vision(smk.wildcards.target, smk.input.model, EngineSettings(**settings), dict(smk.params.vision),
                smk.params.seed, smk.output.rows, smk.output.blocks)


if __name__ == "__main__":
    run_script(snakemake, main)  # noqa: F821 - injected by Snakemake
