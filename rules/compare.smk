# Each enabled non-reference target against the reference.


rule compare_logits:
    input:
        reference=f"{RESULTS}/{REFERENCE}/logits.safetensors",
        target=f"{RESULTS}/{{target}}/logits.safetensors",
        code=package_sources("compare"),
    output:
        f"{RESULTS}/compare/{{target}}.json",
    log:
        f"logs/{MODEL}/compare_logits/{{target}}.log",
    params:
        thresholds=config["compare"]["thresholds"],
        tie_tolerance=config["compare"]["tie_tolerance"],
    script:
        "../workflow/scripts/compare_logits.py"
