"""Snakemake adapter: rule evaluate_accuracy -> portcheck.accuracy.evaluate (lm-eval on one target)."""

from portcheck.accuracy.evaluate import evaluate_accuracy
from portcheck.engines.settings import EngineSettings
from portcheck.workflow.script import run_script


def main(smk):
    settings = dict(smk.params.settings)
    settings["threads"] = settings["threads"] or smk.threads
    evaluate_accuracy(smk.wildcards.target, smk.input.model, EngineSettings(**settings), dict(smk.params.accuracy),
                      dict(smk.params.serve), output=smk.output[0], server_log=smk.log.server,
                      python_env=smk.params.server_env)


if __name__ == "__main__":
    run_script(snakemake, main)  # noqa: F821 - injected by Snakemake
