# One engine start per target serves the logit dump, the adaptation check, determinism and samples.


rule dump_logits:
    input:
        model=model_dir(),
        code=engine_sources,
    output:
        logits=f"{RESULTS}/{{target}}/logits.safetensors",
        adaptation=f"{RESULTS}/{{target}}/adaptation.json",
        determinism=f"{RESULTS}/{{target}}/determinism.json",
        samples=f"{RESULTS}/{{target}}/samples.json",
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
        determinism=config["determinism"],
        samples=config["samples"],
        stack=stack_params,
    script:
        "../workflow/scripts/dump_logits.py"
