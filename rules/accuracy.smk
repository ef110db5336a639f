# Stage accuracy (portcheck/accuracy), where accuracy.enabled: lm-evaluation-harness tasks per target (the hf
# reference through lm-eval's hf model, vllm targets through their own `vllm serve` with local-completions), then
# each target against the reference item by item (same answers, exact McNemar, vllm-ascend's rtol rule).


rule evaluate_accuracy:
    input:
        **engine_inputs(),
        tasks=local(ACCURACY_TASK_DATA),
        code=accuracy_sources,
    output:
        target_file("accuracy"),
    log:
        main=f"logs/{MODEL}/evaluate_accuracy/{{target}}.log",
        server=f"logs/{MODEL}/evaluate_accuracy/{{target}}.server.log",
    threads: target_threads
    resources:
        gpu=device_resources("gpu"),
        npu=device_resources("npu"),
    params:
        settings=target_settings,
        # What the evaluation reads: the verdict's settings (rtol, alpha, in_verdict) rerun only the comparison.
        accuracy={k: v for k, v in config["accuracy"].items() if k not in ("rtol", "alpha", "in_verdict")},
        serve={k: config["serve"][k] for k in ("port", "start_timeout_s")},
        stack=stack_params,
        lm_eval=LM_EVAL_VERSION,
        # lm-eval runs here; a vllm target's server runs in the target's own environment (not a hand-over).
        server_env=target_python_env,
    script:
        "../workflow/scripts/evaluate_accuracy.py"


rule compare_accuracy:
    input:
        reference=target_file("accuracy", REFERENCE),
        target=target_file("accuracy"),
        code=package_sources("accuracy.compare"),
    output:
        compare_file(kind="accuracy_compare"),
    log:
        f"logs/{MODEL}/compare_accuracy/{{target}}.log",
    params:
        rtol=config["accuracy"]["rtol"],
        alpha=config["accuracy"]["alpha"],
        in_verdict=config["accuracy"]["in_verdict"],
    script:
        "../workflow/scripts/compare_accuracy.py"
