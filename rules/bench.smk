# Offline benchmarks per target (one engine start): throughput grid, latency percentiles, memory, start times.

BENCH_PLOTS = {
    "throughput_vs_batch": f"{REPORTS}/throughput_vs_batch.png",
    "latency_percentiles": f"{REPORTS}/latency_percentiles.png",
}


rule run_benchmarks:
    input:
        model=model_dir(),
        code=bench_sources,
    output:
        json=f"{RESULTS}/{{target}}/bench.json",
        csv=f"{RESULTS}/{{target}}/bench.csv",
    log:
        main=f"logs/{MODEL}/run_benchmarks/{{target}}.log",
        engine=f"logs/{MODEL}/run_benchmarks/{{target}}.engine.log",
    threads: target_threads
    resources:
        gpu=device_resources("gpu"),
        npu=device_resources("npu"),
    params:
        settings=target_settings,
        bench={k: v for k, v in config["bench"].items() if k != "consistency_tolerance"},
        stack=stack_params,
    script:
        "../workflow/scripts/run_benchmarks.py"


rule plot_bench:
    input:
        bench=expand(f"{RESULTS}/{{target}}/bench.json", target=TARGETS),
        code=package_sources("plots"),
    output:
        throughput=BENCH_PLOTS["throughput_vs_batch"],
        latency=BENCH_PLOTS["latency_percentiles"],
    log:
        f"logs/{MODEL}/plot_bench.log",
    params:
        targets=TARGETS,
    script:
        "../workflow/scripts/plot_bench.py"
