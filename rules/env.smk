# Environment capture per target, on the host (and device) that runs the target.


rule capture_env:
    input:
        package_sources("envinfo", "atomic"),
    output:
        f"{RESULTS}/{{target}}/env.json",
    log:
        f"logs/{MODEL}/capture_env/{{target}}.log",
    resources:
        gpu=device_resources("gpu"),
        npu=device_resources("npu"),
    params:
        stack=stack_params,
    script:
        "../workflow/scripts/capture_env.py"
