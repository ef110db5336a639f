"""Snakemake adapter: rule check_serving -> portcheck.benchmarks.serving.check_serving (the server is always stopped;
`vllm bench serve` sweeps the load; the target's accuracy evaluation is done on the same server and handed over)."""

from portcheck.accuracy.evaluate import served_handover
from portcheck.engines.settings import EngineSettings
from portcheck.benchmarks.serving import check_serving
from portcheck.workflow.script import run_script


def main(smk):
    settings = dict(smk.params.settings)
    settings["threads"] = settings["threads"] or smk.threads
    settings = EngineSettings(**settings)
    # smk.config: what rule evaluate_accuracy will be given, read without making it this job's rerun trigger.
    config = getattr(smk, "config", None)
    offers = served_handover(config, smk.wildcards.target, smk.input.model, settings, smk.input.manifest,
                             smk.params.handoff) if config else {}
    check_serving(smk.wildcards.target, smk.input.model, settings, dict(smk.params.serve),
                  dump_path=smk.input.dump, output=smk.output[0], server_log=smk.log.server,
                  corpus_path=smk.input.corpus, bench_log=smk.log.bench, while_up=offers)


if __name__ == "__main__":
    run_script(snakemake, main)  # noqa: F821 - injected by Snakemake
