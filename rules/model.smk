# Stage model (portcheck/model): the checkpoint, fetched (or the tiny model built) atomically under
# resources/models/<model>/, and its manifest.


if config["model"]["source"] != "local":

    rule fetch_model:
        input:
            fetch_inputs(),
        output:
            directory(f"resources/models/{MODEL}"),
        log:
            f"logs/{MODEL}/fetch_model.log",
        params:
            source=config["model"]["source"],
            repo_id=config["model"]["repo_id"],
            revision=config["model"]["revision"],
            seed=config["model"]["tiny_seed"],
        script:
            "../workflow/scripts/fetch_model.py"


# The checkpoint checked before any engine starts (every tensor's bytes inside its file, config.json, the
# tokenizer's vocabulary and its ids on the prompts and corpus): every engine job reads the manifest (engine_inputs).
rule write_manifest:
    input:
        **({"corpus": CORPUS_TEXT} if CORPUS or MODE_RUNS else {}),
        model=model_dir(),
        code=package_sources("model.checkpoint", "atomic"),
    output:
        MANIFEST,
    log:
        f"logs/{MODEL}/write_manifest.log",
    params:
        source={k: config["model"][k] for k in ("source", "repo_id", "revision", "path")},
        prompts=PROMPTS,
        trust_remote_code=config["model"]["trust_remote_code"],
        checkpoint=local_checkpoint_fingerprint(),
    script:
        "../workflow/scripts/write_manifest.py"
