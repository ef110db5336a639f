# Stage modes (portcheck/modes): each configured <target>+<mode> run starts its target's engine with the mode on,
# decodes the mode workload, scores the corpus windows and records the engine's counters as proof (run_mode); the
# reference scores the decoded tokens (score_mode, also those of the target's base-configuration run, written by
# dump_logits); for an mtp run the reference MTP (the checkpoint's mtp.* weights in PyTorch) drafts along the run's
# tokens (score_mtp); compare_mode sets the mode against the reference and against the base, on the decode path and
# on the prefill path, and an mtp run's acceptance against the reference MTP's.


rule run_mode:
    input:
        **engine_inputs(),
        corpus=CORPUS_TEXT,
        code=mode_sources,
    output:
        **({"corpus": mode_file("mode_corpus")} if CORPUS else {}),
        decode=mode_file("mode_decode"),
        proof=mode_file("mode_proof"),
    log:
        main=f"logs/{MODEL}/run_mode/{{target}}+{{mode}}.log",
        engine=f"logs/{MODEL}/run_mode/{{target}}+{{mode}}.engine.log",
    wildcard_constraints:
        mode=MODE_PATTERN,
    threads: target_threads
    resources:
        gpu=device_resources("gpu"),
        npu=device_resources("npu"),
    params:
        prompts=PROMPTS,
        settings=target_settings,
        modes=MODE_SETTINGS,
        corpus=CORPUS_WINDOWS,
        storage=STORAGE,
        stack=stack_params,
        python_env=target_python_env,
    script:
        "../workflow/scripts/run_mode.py"


rule score_mode:
    input:
        model=model_dir(),
        decode=mode_file("mode_decode"),
        code=reference_decode_sources,
    output:
        mode_file("mode_reference"),
    log:
        main=f"logs/{MODEL}/score_mode/{{target}}+{{mode}}.log",
        engine=f"logs/{MODEL}/score_mode/{{target}}+{{mode}}.engine.log",
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


rule score_mtp:
    input:
        model=model_dir(),
        decode=mode_file("mode_decode", mode="mtp"),
        code=mtp_reference_sources,
    output:
        mode_file("mode_mtp_reference", mode="mtp"),
    log:
        main=f"logs/{MODEL}/score_mtp/{{target}}.log",
        engine=f"logs/{MODEL}/score_mtp/{{target}}.engine.log",
    threads: REFERENCE_THREADS
    resources:
        gpu=int(REFERENCE_DEVICE == "gpu"),
        npu=int(REFERENCE_DEVICE == "npu"),
    params:
        reference=REFERENCE,
        settings=vars(engine_settings(config, REFERENCE)),
        spec_tokens=config["modes"]["spec_tokens"],
        head_required=True,
        stack=REFERENCE_STACK,
        python_env=REFERENCE_PYTHON_ENV,
    script:
        "../workflow/scripts/score_mtp.py"


# The MTP head's own acceptance, for the model section: score_mtp's replay on the reference's greedy decode of the
# decode prompts (the reference's tokens decide what is accepted), with no vLLM run; a checkpoint without an MTP head
# is "not measured" there, not refused.
use rule score_mtp as measure_mtp with:
    input:
        model=model_dir(),
        decode=target_file("decode", REFERENCE),
        code=mtp_reference_sources,
    output:
        MTP_HEAD,
    log:
        main=f"logs/{MODEL}/measure_mtp.log",
        engine=f"logs/{MODEL}/measure_mtp.engine.log",
    params:
        head_required=False,


rule compare_mode:
    input:
        unpack(mtp_reference_inputs),
        # The prefill path: the corpus windows scored in the mode, the reference's, the base's and the floor's
        # comparisons.
        unpack(mode_corpus_floor),
        **mode_corpus_inputs(),
        proof=mode_file("mode_proof"),
        mode=mode_file("mode_decode"),
        mode_reference=mode_file("mode_reference"),
        base=mode_file("mode_decode", mode="base"),
        base_reference=mode_file("mode_reference", mode="base"),
        code=package_sources("modes.compare"),
    output:
        mode_compare_file(),
    log:
        f"logs/{MODEL}/compare_mode/{{target}}+{{mode}}.log",
    wildcard_constraints:
        mode=MODE_PATTERN,
    params:
        thresholds=config["compare"]["thresholds"],
        tie_tolerance=config["compare"]["tie_tolerance"],
        positions=config["compare"]["positions"],
        score_from=config["corpus"]["score_from"],
        mtp_acceptance=config["modes"]["mtp_acceptance"],
        no_floor=no_floor,
    script:
        "../workflow/scripts/compare_mode.py"
