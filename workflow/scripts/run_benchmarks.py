"""Snakemake adapter: rule run_benchmarks -> portcheck.benchmarks.offline.run_benchmarks (one engine start per target)."""

from portcheck.benchmarks.offline import run_benchmarks
from portcheck.engines.settings import EngineSettings
from portcheck.workflow.script import run_script
from portcheck.targets import parse_target


def main(smk):
    settings = dict(smk.params.settings)
    settings["threads"] = settings["threads"] or smk.threads
    settings["extra"] = {"log_file": smk.log.engine} if parse_target(smk.wildcards.target).engine == "vllm" else {}
    run_benchmarks(smk.wildcards.target, smk.input.model, EngineSettings(**settings), dict(smk.params.bench),
                   outputs={"json": smk.output.json, "csv": smk.output.csv})


# vLLM's engine spawns processes that re-import this module: only the main process may run the job.
if __name__ == "__main__":
    run_script(snakemake, main)  # noqa: F821 - injected by Snakemake
