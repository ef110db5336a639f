# The serving check per vllm target: `vllm serve` on 127.0.0.1, OpenAI /v1/completions at a few concurrencies,
# and the server's greedy completion against the offline engine's greedy tokens (from the logit dump).

SERVED = [t for t in TARGETS if parse_target(t).engine == "vllm"]


rule check_serving:
    input:
        model=model_dir(),
        dump=f"{RESULTS}/{{target}}/logits.safetensors",
        code=package_sources("serve"),
    output:
        f"{RESULTS}/{{target}}/serve.json",
    log:
        main=f"logs/{MODEL}/check_serving/{{target}}.log",
        server=f"logs/{MODEL}/check_serving/{{target}}.server.log",
    threads: target_threads
    resources:
        gpu=device_resources("gpu"),
        npu=device_resources("npu"),
    params:
        settings=target_settings,
        serve=config["serve"],
    script:
        "../workflow/scripts/check_serving.py"
