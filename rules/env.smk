# Stage env (portcheck/env): the host, device and software stack of each target, captured on the host (and
# device) that runs the target.


rule capture_env:
    input:
        package_sources("env.capture", "atomic"),
    output:
        target_file("env"),
    log:
        f"logs/{MODEL}/capture_env/{{target}}.log",
    resources:
        gpu=device_resources("gpu"),
        npu=device_resources("npu"),
    params:
        stack=stack_params,
        python_env=target_python_env,
    script:
        "../workflow/scripts/capture_env.py"
