# portcheck: does a ported LLM run, agree with a trusted reference, and how fast is it.
#   snakemake --cores 1 report
# model -> per-target runs (logits, adaptation, determinism, samples) -> comparison -> report


from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


include: "rules/common.smk"
include: "rules/model.smk"
include: "rules/env.smk"
include: "rules/logits.smk"
include: "rules/compare.smk"
include: "rules/bench.smk"
include: "rules/serve.smk"
include: "rules/report.smk"
include: "rules/shared.smk"
include: "rules/html.smk"


localrules:
    report,


rule report:
    default_target: True
    input:
        REPORT,
        f"{REPORTS}/report.html",
