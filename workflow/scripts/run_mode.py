"""Snakemake adapter: rule run_mode -> portcheck.modes.run.run_mode (one engine start per mode run; an mtp run's a
second, in the base configuration, for its speed-up)."""

from pathlib import Path

from portcheck.config import read_corpus_text
from portcheck.dump.corpus import corpus_job
from portcheck.engines.settings import EngineSettings
from portcheck.modes.run import run_mode
from portcheck.workflow.script import run_script


def main(smk):
    settings = dict(smk.params.settings)
    settings["threads"] = settings["threads"] or smk.threads
    settings["extra"] = {"log_file": smk.log.engine}
    text = read_corpus_text(Path(smk.input.corpus))
    corpus = corpus_job(smk.input.corpus, smk.params.corpus, text) if smk.params.corpus["enabled"] else None
    run_mode(f"{smk.wildcards.target}+{smk.wildcards.mode}", smk.input.model, list(smk.params.prompts),
             EngineSettings(**settings), text, dict(smk.params.modes), outputs=dict(smk.output.items()),
             corpus=corpus, storage=dict(smk.params.storage))


# vLLM's engine spawns processes that re-import this module: only the main process may run the job.
if __name__ == "__main__":
    run_script(snakemake, main)  # noqa: F821 - injected by Snakemake
