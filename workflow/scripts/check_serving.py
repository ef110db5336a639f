"""Snakemake adapter: rule check_serving -> portcheck.benchmarks.serving.check_serving (the server is always stopped; `vllm bench serve` sweeps the load)."""

from portcheck.engines.settings import EngineSettings
from portcheck.benchmarks.serving import check_serving
from portcheck.workflow.script import run_script


def main(smk):
    settings = dict(smk.params.settings)
    settings["threads"] = settings["threads"] or smk.threads
    check_serving(smk.wildcards.target, smk.input.model, EngineSettings(**settings), dict(smk.params.serve),
                  dump_path=smk.input.dump, output=smk.output[0], server_log=smk.log.server,
                  corpus_path=smk.input.corpus, bench_log=smk.log.bench)


if __name__ == "__main__":
    run_script(snakemake, main)  # noqa: F821 - injected by Snakemake
