"""Snakemake adapter: rule dump_logits -> portcheck.dump.run.run_target (one engine start per target)."""

from portcheck.engines.settings import EngineSettings
from portcheck.dump.run import run_target
from portcheck.workflow.script import run_script
from portcheck.targets import parse_target


def main(smk):
    settings = dict(smk.params.settings)
    settings["threads"] = settings["threads"] or smk.threads
    settings["extra"] = {"log_file": smk.log.engine} if parse_target(smk.wildcards.target).engine == "vllm" else {}
    run_target(
        smk.wildcards.target,
        smk.input.model,
        list(smk.params.prompts),
        EngineSettings(**settings),
        outputs=dict(smk.output.items()),
        greedy_tokens=smk.params.greedy_tokens,
        determinism=dict(smk.params.determinism),
        samples=dict(smk.params.samples),
    )


# vLLM's engine spawns processes that re-import this module: only the main process may run the job.
if __name__ == "__main__":
    run_script(snakemake, main)  # noqa: F821 - injected by Snakemake
