# portcheck: does a ported LLM run, agree with a trusted reference, and how fast is it.
#   snakemake --cores 1 report
# One rule file per stage, one package folder per stage (README: "Where things live"):
#   model -> env -> dump (logits, adaptation, determinism, samples) -> compare -> benchmarks -> accuracy -> report


import sys
from pathlib import Path

from snakemake.utils import min_version

min_version("9.0")
sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from portcheck.workflow.snakemake_overheads import remove_overheads  # noqa: E402

# Snakemake's fixed costs this workflow removes (portcheck.workflow.snakemake_overheads): its pandas import in the
# params check, its wait of up to 1 s before exiting a run that started jobs, its pure-Python YAML parse of config
# files (so before configfile:), its translation of every rule file on every run (so before the includes).
remove_overheads()


configfile: "config/config.yaml"


include: "rules/common.smk"
include: "rules/model.smk"
include: "rules/env.smk"
include: "rules/dump.smk"
include: "rules/compare.smk"
include: "rules/modes.smk"
include: "rules/benchmarks.smk"
include: "rules/accuracy.smk"
include: "rules/vision.smk"
include: "rules/report.smk"
include: "rules/shared_store.smk"


localrules:
    report,


rule report:
    default_target: True
    input:
        REPORT,
        HTML_REPORT,
