# Stage benchmarks (portcheck/benchmarks): offline benchmarks per target (the report asks them of BENCHED, the
# reference only with bench.reference, the bf16 floor only with bench.floor; measured on the dump job's engine and
# handed over, else one engine start), the figures derived from them (roofline, cross-checks), and the serving
# check per vllm target: `vllm serve` on 127.0.0.1, measured by `vllm bench serve` over a load sweep on corpus text,
# and the server's greedy tokens against the offline dump's.


rule run_benchmarks:
    input:
        **engine_inputs(),
        dump=dump_first,
        code=bench_sources,
    output:
        json=target_file("bench"),
        csv=target_file("bench_csv"),
    log:
        main=f"logs/{MODEL}/run_benchmarks/{{target}}.log",
        engine=f"logs/{MODEL}/run_benchmarks/{{target}}.engine.log",
    threads: target_threads
    resources:
        gpu=device_resources("gpu"),
        npu=device_resources("npu"),
    params:
        # settings, bench (not which targets are benchmarked nor the checks' tolerance: those rerun no
        # measurement), stack
        measured=benchmark_params,
        python_env=target_python_env,
        handoff=HANDOFF,
    script:
        "../workflow/scripts/run_benchmarks.py"


# Cheap and apart from run_benchmarks: a new hardware peak or tolerance reruns this, not the measurements.
rule check_benchmarks:
    input:
        bench=target_file("bench"),
        code=package_sources("benchmarks.checks"),
    output:
        target_file("bench_checks"),
    log:
        f"logs/{MODEL}/check_benchmarks/{{target}}.log",
    params:
        hardware=target_hardware,
        tolerance=config["bench"]["consistency_tolerance"],
    script:
        "../workflow/scripts/check_benchmarks.py"


# `vllm bench serve` (the target environment's) sweeps the load on real text (the corpus) from concurrency 1 to
# saturation; the server's greedy tokens are checked against the dump's. Before it stops, the server evaluates the
# target's accuracy for rule evaluate_accuracy (HANDOFF; that code is not an input here: the record's request names
# its digest, and the serving figures do not depend on it).
rule check_serving:
    input:
        **engine_inputs(),
        dump=target_file("logits"),
        corpus=CORPUS_TEXT,
        code=package_sources("benchmarks.serving"),
    output:
        target_file("serve"),
    log:
        main=f"logs/{MODEL}/check_serving/{{target}}.log",
        server=f"logs/{MODEL}/check_serving/{{target}}.server.log",
        bench=f"logs/{MODEL}/check_serving/{{target}}.bench.log",
    threads: target_threads
    resources:
        gpu=device_resources("gpu"),
        npu=device_resources("npu"),
    params:
        settings=target_settings,
        serve=config["serve"],
        python_env=target_python_env,
        handoff=HANDOFF,
    script:
        "../workflow/scripts/check_serving.py"
