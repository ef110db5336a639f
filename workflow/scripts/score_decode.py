"""Snakemake adapter: rule score_decode -> portcheck.dump.decode_reference.score_decode (the reference's engine
on a target's decoded tokens)."""

from portcheck.dump.decode_reference import score_decode
from portcheck.engines.settings import EngineSettings
from portcheck.targets import parse_target
from portcheck.workflow.script import run_script


def main(smk):
    settings = dict(smk.params.settings)
    settings["threads"] = settings["threads"] or smk.threads
    settings["extra"] = {"log_file": smk.log.engine} if parse_target(smk.params.reference).engine == "vllm" else {}
    score_decode(smk.params.reference, smk.input.model, EngineSettings(**settings), smk.input.decode, smk.output[0],
                 dict(smk.params.storage))


# vLLM's engine spawns processes that re-import this module: only the main process may run the job.
if __name__ == "__main__":
    run_script(snakemake, main)  # noqa: F821 - injected by Snakemake
