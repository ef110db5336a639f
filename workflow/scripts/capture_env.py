"""Snakemake adapter: rule capture_env -> portcheck.env.capture.capture_env."""

from portcheck.atomic import write_json
from portcheck.env.capture import capture_env
from portcheck.workflow.script import run_script


def main(smk):
    write_json(smk.output[0], capture_env(smk.wildcards.target, workdir=smk.scriptdir))


if __name__ == "__main__":
    run_script(snakemake, main)  # noqa: F821 - injected by Snakemake
