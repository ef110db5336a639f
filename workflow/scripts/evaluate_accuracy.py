"""Snakemake adapter: rule evaluate_accuracy -> portcheck.accuracy.evaluate (lm-eval on one target; the record handed
over by the job that evaluated it on its engine: a vllm target's serving check on its server, an hf target's dump job
with the model it loaded)."""

from portcheck.accuracy.evaluate import evaluate_accuracy, evaluation_request
from portcheck.engines.settings import EngineSettings
from portcheck.workflow.handoff import take
from portcheck.workflow.script import run_script


def main(smk):
    params = dict(smk.params.measured)
    settings = dict(params["settings"])
    settings["threads"] = settings["threads"] or smk.threads
    handed_over = None
    if smk.input.offered_by:
        handed_over = take(smk.params.handoff, evaluation_request(smk.wildcards.target, params, smk.input.manifest,
                                                                  smk.input.tasks))
    evaluate_accuracy(smk.wildcards.target, smk.input.model, EngineSettings(**settings), dict(params["accuracy"]),
                      dict(params["serve"]), output=smk.output[0], server_log=smk.log.server,
                      python_env=params["server_env"], handed_over=handed_over)


if __name__ == "__main__":
    run_script(snakemake, main)  # noqa: F821 - injected by Snakemake
