# Stage accuracy (portcheck/accuracy), where accuracy.enabled: lm-evaluation-harness tasks per target (the bf16 floor
# only with accuracy.floor: NOT_EVALUATED in rules/common.smk; hf targets
# through lm-eval's hf model: the model their dump job loaded, which evaluates them and hands the record over, else
# lm-eval's own load; vllm targets through `vllm serve` with local-completions: the serving check's server, which
# evaluates the target before it stops and hands the record over, else their own), then
# each target against the reference item by item (same answers, exact McNemar, vllm-ascend's rtol rule).


rule evaluate_accuracy:
    input:
        **engine_inputs(),
        tasks=local(ACCURACY_TASK_DATA),
        offered_by=accuracy_offered_by,
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
        # settings, accuracy (not the verdict's rtol, alpha, in_verdict: those rerun only the comparison; nor floor,
        # which only adds or drops the floor's jobs), serve,
        # stack, lm_eval, server_env (lm-eval runs here; a vllm target's server in the target's environment).
        measured=accuracy_params,
        handoff=HANDOFF,
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
