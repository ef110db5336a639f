"""Snakemake adapter: rule capture_env -> portcheck.envinfo.capture_env."""

from portcheck.atomic import write_json
from portcheck.envinfo import capture_env
from portcheck.smk import run_script


def main(smk):
    write_json(smk.output[0], capture_env(smk.wildcards.target, workdir=smk.scriptdir))


if __name__ == "__main__":
    run_script(snakemake, main)  # noqa: F821 - injected by Snakemake
