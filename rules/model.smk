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


rule write_manifest:
    input:
        model=model_dir(),
        code=package_sources("model.checkpoint", "atomic"),
    output:
        f"{RESULTS}/manifest.json",
    log:
        f"logs/{MODEL}/write_manifest.log",
    params:
        source={k: config["model"][k] for k in ("source", "repo_id", "revision", "path")},
    script:
        "../workflow/scripts/write_manifest.py"
