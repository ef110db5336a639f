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
        per_position=report(PLOTS["kld_per_position"], category="Precision"),
        distribution=report(PLOTS["kld_distribution"], category="Precision"),
    log:
        f"logs/{MODEL}/plot_kld.log",
    params:
        targets=COMPARED,
    script:
        "../workflow/scripts/plot_kld.py"


rule render_report:
    input:
        template=local("reports/templates/report.md.j2"),
        manifest=f"{RESULTS}/manifest.json",
        per_target=[f"{RESULTS}/{t}/{f}" for t in TARGETS for f in TARGET_FILES.values()],
        compare=expand(f"{RESULTS}/compare/{{target}}.json", target=COMPARED),
        plots=PLOTS.values(),
        bench=expand(f"{RESULTS}/{{target}}/bench.json", target=TARGETS),
        serve=expand(f"{RESULTS}/{{target}}/serve.json", target=SERVED),
        bench_plots=BENCH_PLOTS.values(),
        code=package_sources("report", "history"),
    output:
        REPORT,
    log:
        f"logs/{MODEL}/render_report.log",
    params:
        model=MODEL,
        reference=REFERENCE,
        targets=TARGETS,
        compared=COMPARED,
        files=TARGET_FILES,
        plots={name: Path(path).name for name, path in {**PLOTS, **BENCH_PLOTS}.items()},
        served=SERVED,
        configfile=CONFIGFILE,
        config=config,
        # Appended by every report run, read for the History section; not an input, so deleting it loses nothing.
        history=f"{RESULTS}/history.jsonl",
    script:
        "../workflow/scripts/render_report.py"
