"""Snakemake adapter: rule fetch_model -> portcheck.model.acquire.fetch_model."""

from portcheck.model.acquire import fetch_model
from portcheck.workflow.script import run_script


def main(smk):
    p = smk.params
    fetch_model(p.source, smk.output[0], repo_id=p.repo_id, revision=p.revision, seed=p.seed)


if __name__ == "__main__":
    run_script(snakemake, main)  # noqa: F821 - injected by Snakemake
