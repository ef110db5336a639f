"""Snakemake adapter: rule run_benchmarks -> portcheck.benchmarks.offline.run_benchmarks (one engine start per target;
the record handed over by the target's dump job where that job measured it on its own engine)."""

from portcheck.benchmarks.offline import bench_request, run_benchmarks, write_outputs
from portcheck.engines.settings import EngineSettings
from portcheck.workflow.handoff import take
from portcheck.workflow.script import run_script
from portcheck.targets import parse_target


def main(smk):
    measured = dict(smk.params.measured)
    outputs = {"json": smk.output.json, "csv": smk.output.csv}
    handed_over = take(smk.params.handoff, bench_request(smk.wildcards.target, measured, smk.params.python_env,
                                                         smk.input.manifest))
    if handed_over is not None:
        write_outputs(handed_over, outputs)
        return
    settings = dict(measured["settings"])
    settings["threads"] = settings["threads"] or smk.threads
    settings["extra"] = {"log_file": smk.log.engine} if parse_target(smk.wildcards.target).engine == "vllm" else {}
    run_benchmarks(smk.wildcards.target, smk.input.model, EngineSettings(**settings), dict(measured["bench"]),
                   outputs=outputs)


# vLLM's engine spawns processes that re-import this module: only the main process may run the job.
if __name__ == "__main__":
    run_script(snakemake, main)  # noqa: F821 - injected by Snakemake
