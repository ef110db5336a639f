# Model acquisition and its manifest. Downloads land atomically under resources/models/<model>/.


def fetch_inputs():
    """A download does not depend on the tiny model's code: editing it must not re-download a checkpoint."""
    if config["model"]["source"] == "tiny":
        return package_sources("acquire") + ["src/portcheck/data/tiny_corpus.txt"]
    return package_sources("acquire", exclude=("tiny",))


if config["model"]["source"] != "local":

    rule fetch_model:
        input:
            fetch_inputs(),
        output:
            directory(f"resources/models/{MODEL}"),
        params:
            source=config["model"]["source"],
            repo_id=config["model"]["repo_id"],
            revision=config["model"]["revision"],
            seed=config["model"]["tiny_seed"],
        log:
            f"logs/{MODEL}/fetch_model.log",
        script:
            "../workflow/scripts/fetch_model.py"


rule write_manifest:
    input:
        model=model_dir(),
        code=package_sources("checkpoint", "atomic"),
    output:
        f"{RESULTS}/manifest.json",
    params:
        source={k: config["model"][k] for k in ("source", "repo_id", "revision", "path")},
    log:
        f"logs/{MODEL}/write_manifest.log",
    script:
        "../workflow/scripts/write_manifest.py"
