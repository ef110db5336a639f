"""Snakemake adapter: rule measure_context -> portcheck.model.context.measure_context (the reference's next-token
loss on the corpus windows with the whole window and with the last 64 tokens)."""

from pathlib import Path

from portcheck.config import read_corpus_text
from portcheck.dump.corpus import corpus_job
from portcheck.engines.settings import EngineSettings
from portcheck.model.context import measure_context
from portcheck.targets import parse_target
from portcheck.workflow.script import run_script


def main(smk):
    settings = dict(smk.params.settings)
    settings["threads"] = settings["threads"] or smk.threads
    settings["extra"] = {"log_file": smk.log.engine} if parse_target(smk.params.reference).engine == "vllm" else {}
    corpus = corpus_job(smk.input.corpus, smk.params.corpus, read_corpus_text(Path(smk.input.corpus)))
    measure_context(smk.params.reference, smk.input.model, EngineSettings(**settings), corpus, smk.output[0])


# vLLM's engine spawns processes that re-import this module: only the main process may run the job.
if __name__ == "__main__":
    run_script(snakemake, main)  # noqa: F821 - injected by Snakemake
