# Stage compare (portcheck/compare): each enabled non-reference target against the reference, on the seed prompts
# and on the long-context corpus windows (by position bucket).


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


rule compare_corpus:
    input:
        reference=target_file("corpus", REFERENCE),
        target=target_file("corpus"),
        code=package_sources("compare.corpus"),
    output:
        corpus_compare_file(),
    log:
        f"logs/{MODEL}/compare_corpus/{{target}}.log",
    params:
        thresholds=config["compare"]["thresholds"],
        tie_tolerance=config["compare"]["tie_tolerance"],
        corpus=config["corpus"],
    script:
        "../workflow/scripts/compare_corpus.py"
