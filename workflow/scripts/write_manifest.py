"""Snakemake adapter: rule write_manifest -> portcheck.model.checkpoint.build_manifest (the checkpoint checked on
the prompts and corpus the engines will read, before any engine starts)."""

from pathlib import Path

from portcheck.atomic import write_json
from portcheck.model.checkpoint import build_manifest
from portcheck.workflow.script import run_script


def main(smk):
    # The corpus was read as UTF-8 when the config was validated.
    corpus = [Path(smk.input.corpus).read_text(encoding="utf-8")] if "corpus" in smk.input.keys() else []
    write_json(smk.output[0], build_manifest(smk.input.model, dict(smk.params.source),
                                             [*smk.params.prompts, *corpus], smk.params.trust_remote_code))


if __name__ == "__main__":
    run_script(snakemake, main)  # noqa: F821 - injected by Snakemake
