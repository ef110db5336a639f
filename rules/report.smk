# Plots and the Jinja-rendered markdown report, from the artifacts alone.

PLOTS = {
    "kld_per_position": f"{REPORTS}/kld_per_position.png",
    "kld_distribution": f"{REPORTS}/kld_distribution.png",
}
TARGET_FILES = {
    "env": "env.json",
    "logits": "logits.safetensors",
    "adaptation": "adaptation.json",
    "determinism": "determinism.json",
    "samples": "samples.json",
}


rule plot_kld:
    input:
        compare=expand(f"{RESULTS}/compare/{{target}}.json", target=COMPARED),
        code=package_sources("plots"),
    output:
        per_position=PLOTS["kld_per_position"],
        distribution=PLOTS["kld_distribution"],
    params:
        targets=COMPARED,
    log:
        f"logs/{MODEL}/plot_kld.log",
    script:
        "../workflow/scripts/plot_kld.py"


rule render_report:
    input:
        template="reports/templates/report.md.j2",
        manifest=f"{RESULTS}/manifest.json",
        per_target=[f"{RESULTS}/{t}/{f}" for t in TARGETS for f in TARGET_FILES.values()],
        compare=expand(f"{RESULTS}/compare/{{target}}.json", target=COMPARED),
        plots=PLOTS.values(),
        code=package_sources("report"),
    output:
        REPORT,
    params:
        model=MODEL,
        reference=REFERENCE,
        targets=TARGETS,
        compared=COMPARED,
        results=RESULTS,
        files=TARGET_FILES,
        plots={name: Path(path).name for name, path in PLOTS.items()},
        configfile=CONFIGFILE,
        config=config,
    log:
        f"logs/{MODEL}/render_report.log",
    script:
        "../workflow/scripts/render_report.py"
