"""Snakemake adapter: rules score_mtp and measure_mtp -> portcheck.modes.mtp_reference.score_mtp (the reference MTP's
acceptance on an mtp run's tokens, or on the reference's own greedy decode)."""

from portcheck.engines.settings import EngineSettings
from portcheck.modes.mtp_reference import score_mtp
from portcheck.workflow.script import run_script


def main(smk):
    settings = dict(smk.params.settings)
    settings["threads"] = settings["threads"] or smk.threads
    settings["extra"] = {}
    score_mtp(smk.params.reference, smk.input.model, EngineSettings(**settings), smk.input.decode, smk.output[0],
              smk.params.spec_tokens, smk.params.head_required)


if __name__ == "__main__":
    run_script(snakemake, main)  # noqa: F821 - injected by Snakemake
