# Stage compare (portcheck/compare): each enabled non-reference target against the reference, on the seed prompts
# the long-context corpus windows and the decode steps (by bucket of positions), and layer by layer.


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
        unpack(corpus_floor),
        reference=target_file("corpus", REFERENCE),
        target=target_file("corpus"),
        code=package_sources("compare.positions"),
    output:
        compare_file(kind="corpus_compare"),
    log:
        f"logs/{MODEL}/compare_corpus/{{target}}.log",
    params:
        thresholds=config["compare"]["thresholds"],
        tie_tolerance=config["compare"]["tie_tolerance"],
        positions=config["compare"]["positions"],
        score_from=config["corpus"]["score_from"],
        storage=STORAGE,
        no_floor=no_floor,
    script:
        "../workflow/scripts/compare_corpus.py"


rule compare_decode:
    input:
        unpack(decode_floor),
        reference=target_file("decode_reference"),
        target=target_file("decode"),
        # The same target's prefill precision, for the decode-vs-prefill check.
        prefill=compare_file(kind="corpus_compare" if CORPUS else "compare"),
        code=package_sources("compare.positions"),
    output:
        compare_file(kind="decode_compare"),
    log:
        f"logs/{MODEL}/compare_decode/{{target}}.log",
    params:
        thresholds=config["compare"]["thresholds"],
        tie_tolerance=config["compare"]["tie_tolerance"],
        positions=config["compare"]["positions"],
        no_floor=no_floor,
    script:
        "../workflow/scripts/compare_decode.py"


rule compare_layers:
    input:
        unpack(layers_floor),
        reference=target_file("layers", REFERENCE),
        target=target_file("layers"),
        code=package_sources("compare.layers"),
    output:
        compare_file(kind="layers_compare"),
    log:
        f"logs/{MODEL}/compare_layers/{{target}}.log",
    params:
        layers=config["layers"],
        bucket=config["compare"]["positions"]["bucket"],
        no_floor=no_floor,
    script:
        "../workflow/scripts/compare_layers.py"
