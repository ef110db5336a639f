# Stage vision (portcheck/vision), where vision.enabled: image prompts (drawn from a seed, plus the user's files)
# through the whole model of each target whose engine takes images (hf, vllm), then each target against the
# reference: the text after the images as the seed prompts are compared, the image tokens and rotary positions,
# and every vision block; each against the bf16 floor's image prompts where there is one.


rule dump_vision:
    input:
        **engine_inputs(),
        images=local(config["vision"]["images"]),
        code=vision_sources,
    output:
        rows=target_file("vision"),
        blocks=target_file("vision_blocks"),
    log:
        f"logs/{MODEL}/dump_vision/{{target}}.log",
    threads: target_threads
    resources:
        gpu=device_resources("gpu"),
        npu=device_resources("npu"),
    params:
        settings=target_settings,
        vision=config["vision"],
        seed=config["model"]["tiny_seed"],
        stack=stack_params,
        python_env=target_python_env,
    script:
        "../workflow/scripts/dump_vision.py"


rule compare_vision:
    input:
        unpack(vision_dumps),
        code=package_sources("vision.compare"),
    output:
        compare_file(kind="vision_compare"),
    log:
        f"logs/{MODEL}/compare_vision/{{target}}.log",
    params:
        thresholds=config["compare"]["thresholds"],
        tie_tolerance=config["compare"]["tie_tolerance"],
        localise={key: config["layers"][key] for key in ("cosine_min", "rel_l2_max", "floor_multiple_max")},
        positions=config["compare"]["positions"],
        no_floor=no_floor,
        not_wired=vision_not_wired,
    script:
        "../workflow/scripts/compare_vision.py"
