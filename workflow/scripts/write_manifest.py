"""Snakemake adapter: rule write_manifest -> portcheck.model.checkpoint.build_manifest."""

from portcheck.atomic import write_json
from portcheck.model.checkpoint import build_manifest
from portcheck.workflow.script import run_script


def main(smk):
    write_json(smk.output[0], build_manifest(smk.input.model, dict(smk.params.source)))


if __name__ == "__main__":
    run_script(snakemake, main)  # noqa: F821 - injected by Snakemake
