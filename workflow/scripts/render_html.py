"""Snakemake adapter: rule render_html -> portcheck.report.html.render_html."""

from portcheck.report.html import render_html
from portcheck.workflow.script import run_script


def main(smk):
    render_html(smk.input.report, smk.output[0])


if __name__ == "__main__":
    run_script(snakemake, main)  # noqa: F821 - injected by Snakemake
