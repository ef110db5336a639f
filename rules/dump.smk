# Stage dump (portcheck/dump): one engine start per target serves the logit dump, the adaptation checklist,
# the determinism test, the generation samples, the long-context corpus windows and the greedy decode with every
# step's distribution, and measures the target's offline benchmarks for rule run_benchmarks and an hf target's
# accuracy for rule evaluate_accuracy (HANDOFF; that code is not an input here: the record's request names its
# digest, and the dump does not depend on it); score_decode then has the reference's engine score each target's
# decoded tokens, score_decode_floor the bf16 floor's.


rule dump_logits:
    input:
        **dump_inputs(),
        code=dump_sources,
    output:
        **{kind: target_file(kind) for kind in DUMPED_KINDS},
    log:
        main=f"logs/{MODEL}/dump_logits/{{target}}.log",
        engine=f"logs/{MODEL}/dump_logits/{{target}}.engine.log",
    threads: target_threads
    resources:
        gpu=device_resources("gpu"),
        npu=device_resources("npu"),
    params:
        prompts=PROMPTS,
        settings=target_settings,
        greedy_tokens=config["logits"]["greedy_tokens"],
        determinism=dump_measurement("determinism"),
        samples=dump_measurement("samples"),
        not_measured=not_measured,
        corpus=config["corpus"],
        decode=config["decode"],
        layers=LAYER_CAPTURE,
        modes=None,
        storage=STORAGE,
        stack=stack_params,
        python_env=target_python_env,
        handoff=HANDOFF,
    script:
        "../workflow/scripts/dump_logits.py"


# A target that mode runs are set against (MODE_TARGETS): the same job, which also decodes the mode workload in the
# target's base configuration (modes/base), in the same engine start.
use rule dump_logits as dump_logits_with_mode_base with:
    output:
        **{kind: target_file(kind) for kind in (*DUMPED_KINDS, MODES_KIND)},
    wildcard_constraints:
        target=MODE_TARGET_PATTERN,
    params:
        modes=MODE_WORKLOAD,


ruleorder: dump_logits_with_mode_base > dump_logits


rule score_decode:
    input:
        model=model_dir(),
        decode=target_file("decode"),
        code=reference_decode_sources,
    output:
        target_file("decode_reference"),
    log:
        main=f"logs/{MODEL}/score_decode/{{target}}.log",
        engine=f"logs/{MODEL}/score_decode/{{target}}.engine.log",
    threads: REFERENCE_THREADS
    resources:
        gpu=int(REFERENCE_DEVICE == "gpu"),
        npu=int(REFERENCE_DEVICE == "npu"),
    params:
        reference=REFERENCE,
        settings=vars(engine_settings(config, REFERENCE)),
        storage=STORAGE,
        stack=REFERENCE_STACK,
        python_env=REFERENCE_PYTHON_ENV,
    script:
        "../workflow/scripts/score_decode.py"


# The bf16 floor's engine (FLOOR_TARGET) scores the same decoded tokens: compare_decode's decode-vs-floor check.
use rule score_decode as score_decode_floor with:
    input:
        model=model_dir(),
        decode=target_file("decode"),
        code=floor_decode_sources,
    output:
        target_file("decode_floor"),
    log:
        main=f"logs/{MODEL}/score_decode_floor/{{target}}.log",
        engine=f"logs/{MODEL}/score_decode_floor/{{target}}.engine.log",
    threads: floor_threads
    resources:
        gpu=int(FLOOR_DEVICE == "gpu"),
        npu=int(FLOOR_DEVICE == "npu"),
    params:
        reference=FLOOR_TARGET,
        settings=FLOOR_SETTINGS,
        storage=STORAGE,
        stack=FLOOR_STACK,
        python_env=FLOOR_PYTHON_ENV,


# How much the model needs far context: the reference's loss with the whole corpus window against the last 64
# tokens only (the model section; a model that forgets fast hides every fault in a carried state).
rule measure_context:
    input:
        model=model_dir(),
        corpus=CORPUS_TEXT,
        code=context_sources,
    output:
        CONTEXT,
    log:
        main=f"logs/{MODEL}/measure_context.log",
        engine=f"logs/{MODEL}/measure_context.engine.log",
    threads: REFERENCE_THREADS
    resources:
        gpu=int(REFERENCE_DEVICE == "gpu"),
        npu=int(REFERENCE_DEVICE == "npu"),
    params:
        reference=REFERENCE,
        settings=vars(engine_settings(config, REFERENCE)),
        corpus=config["corpus"],
        stack=REFERENCE_STACK,
        python_env=REFERENCE_PYTHON_ENV,
    script:
        "../workflow/scripts/measure_context.py"
