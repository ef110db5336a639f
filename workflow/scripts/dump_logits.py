"""Snakemake adapter: rules dump_logits and dump_logits_with_mode_base -> portcheck.dump.run.run_target (one engine
start per target; the target's offline benchmarks measured on it and handed over to run_benchmarks, and an hf target's
accuracy evaluated on it and handed over to evaluate_accuracy)."""

from pathlib import Path

from portcheck.accuracy.evaluate import loaded_handover
from portcheck.benchmarks.offline import benchmark_handover
from portcheck.config import read_corpus_text
from portcheck.engines.settings import EngineSettings
from portcheck.dump.corpus import corpus_job
from portcheck.dump.run import run_target
from portcheck.workflow.script import run_script
from portcheck.targets import parse_target


def main(smk):
    settings = dict(smk.params.settings)
    settings["threads"] = settings["threads"] or smk.threads
    settings["extra"] = {"log_file": smk.log.engine} if parse_target(smk.wildcards.target).engine == "vllm" else {}
    settings = EngineSettings(**settings)
    # smk.config: what rules run_benchmarks and evaluate_accuracy will be given, read without making it this job's
    # rerun trigger.
    config = getattr(smk, "config", None)
    offers = {**benchmark_handover(config, smk.wildcards.target, smk.input.model, settings, smk.input.manifest,
                                   smk.params.handoff),
              **loaded_handover(config, smk.wildcards.target, smk.input.manifest, smk.params.handoff)} if config else {}
    run_target(
        smk.wildcards.target,
        smk.input.model,
        list(smk.params.prompts),
        settings,
        outputs=dict(smk.output.items()),
        greedy_tokens=smk.params.greedy_tokens,
        determinism=dict(smk.params.determinism) if smk.params.determinism else None,
        samples=dict(smk.params.samples) if smk.params.samples else None,
        not_measured=dict(smk.params.not_measured),
        corpus=corpus_for(smk),
        decode=dict(smk.params.decode) if smk.params.decode["enabled"] else None,
        layers=dict(smk.params.layers) if smk.params.layers["enabled"] else None,
        modes=modes_job(smk),
        storage=dict(smk.params.storage),
        while_up=offers,
    )


def modes_job(smk):
    """The mode workload to decode in this (base) configuration (None: no mode run is set against this target)."""
    if smk.params.modes is None:
        return None
    return {**smk.params.modes, "corpus_text": read_corpus_text(Path(smk.input.corpus))}


def corpus_for(smk):
    """The corpus windows to score in this engine start (None: corpus disabled)."""
    if not smk.params.corpus["enabled"]:
        return None
    return corpus_job(smk.input.corpus, smk.params.corpus, read_corpus_text(Path(smk.input.corpus)))


# vLLM's engine spawns processes that re-import this module: only the main process may run the job.
if __name__ == "__main__":
    run_script(snakemake, main)  # noqa: F821 - injected by Snakemake
