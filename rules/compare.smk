# Each enabled non-reference target against the reference.


rule compare_logits:
    input:
        reference=f"{RESULTS}/{REFERENCE}/logits.safetensors",
        target=f"{RESULTS}/{{target}}/logits.safetensors",
        code=package_sources("compare"),
    output:
        f"{RESULTS}/compare/{{target}}.json",
    params:
        thresholds=config["compare"]["thresholds"],
        tie_tolerance=config["compare"]["tie_tolerance"],
    log:
        f"logs/{MODEL}/compare_logits/{{target}}.log",
    script:
        "../workflow/scripts/compare_logits.py"
