# Stage dump (portcheck/dump): one engine start per target serves the logit dump, the adaptation checklist,
# the determinism test, the generation samples and the long-context corpus windows.


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
        determinism=config["determinism"],
        samples=config["samples"],
        corpus=config["corpus"],
        stack=stack_params,
    script:
        "../workflow/scripts/dump_logits.py"
