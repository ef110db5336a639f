# Stage compare (portcheck/compare): each enabled non-reference target against the reference.


rule compare_logits:
    input:
        reference=target_file("logits", REFERENCE),
        target=target_file("logits"),
        code=package_sources("compare.compare"),
    output:
        compare_file(),
    log:
        f"logs/{MODEL}/compare_logits/{{target}}.log",
    params:
        thresholds=config["compare"]["thresholds"],
        tie_tolerance=config["compare"]["tie_tolerance"],
    script:
        "../workflow/scripts/compare_logits.py"
