# Stage report (portcheck/report): plots and the Jinja-rendered markdown report, from the artifacts alone, and
# the same report as one HTML page with its plots embedded.


rule plot_kld:
    input:
        compare=compare_files("compare"),
        code=package_sources("report.plots"),
    output:
        per_position=report(PLOTS["kld_per_position"], category="Precision"),
        distribution=report(PLOTS["kld_distribution"], category="Precision"),
    log:
        f"logs/{MODEL}/plot_kld.log",
    params:
        targets=COMPARED,
    script:
        "../workflow/scripts/plot_kld.py"


rule plot_long_context:
    input:
        corpus=compare_files("corpus_compare"),
        code=package_sources("report.plots"),
    output:
        LONG_CONTEXT_PLOT,
    log:
        f"logs/{MODEL}/plot_long_context.log",
    params:
        targets=COMPARED,
    script:
        "../workflow/scripts/plot_long_context.py"


rule plot_layers:
    input:
        layers=compare_files("layers_compare"),
        code=package_sources("report.plots"),
    output:
        LAYERS_PLOT,
    log:
        f"logs/{MODEL}/plot_layers.log",
    params:
        targets=COMPARED,
    script:
        "../workflow/scripts/plot_layers.py"


rule plot_bench:
    input:
        bench=target_files("bench", BENCHED),
        code=package_sources("report.plots"),
    output:
        throughput=BENCH_PLOTS["throughput_vs_batch"],
        latency=BENCH_PLOTS["latency_percentiles"],
    log:
        f"logs/{MODEL}/plot_bench.log",
    params:
        targets=BENCHED,
    script:
        "../workflow/scripts/plot_bench.py"


rule plot_serve:
    input:
        serve=target_files("serve", SERVED),
        code=package_sources("report.plots"),
    output:
        SERVE_PLOT,
    log:
        f"logs/{MODEL}/plot_serve.log",
    params:
        targets=SERVED,
    script:
        "../workflow/scripts/plot_serve.py"


rule render_report:
    input:
        # every artifact the report reads (rules/common.smk: checked against their recorded hashes)
        **REPORT_ARTIFACTS,
        template=local("reports/templates/report.md.j2"),
        # make bench-compact's record of compact storage at the real vocabulary (the method note cites it)
        compact_record=local("src/portcheck/dump/data/compact_error_real_shape.json"),
        # make calibrate's detection table on the embedded model (section "What a pass is worth" cites it)
        detection_record=local("src/portcheck/faults/data/detection.json"),
        plots=REPORT_PLOTS.values(),
        code=package_sources("report.render", "report.history", "benchmarks.plan"),
    output:
        REPORT,
    log:
        f"logs/{MODEL}/render_report.log",
    params:
        model=MODEL,
        reference=REFERENCE,
        targets=TARGETS,
        compared=COMPARED,
        # the targets each optional comparison's inputs are for (the accuracy comparison leaves out those the config
        # does not evaluate), and those left out, with the setting (accuracy.floor): the report names it
        compared_for={kind: compared_for(kind) for kind in OPTIONAL_COMPARISONS},
        not_evaluated=NOT_EVALUATED,
        # the determinism tests and samples left out (the references' by default), with the setting
        not_measured=NOT_MEASURED,
        served=SERVED,
        mode_runs=MODE_RUNS,
        mode_runs_not_run=MODE_RUNS_NOT_RUN,
        # The comparisons the config turned off (the report says so instead of waiting for them).
        turned_off=[kind for kind, section in OPTIONAL_COMPARISONS.items() if not config[section]["enabled"]],
        plots={name: Path(path).name for name, path in REPORT_PLOTS.items()},
        configfile=CONFIGFILE,
        config=config,
        # Appended by every report run, read for the History section; not an input, so deleting it loses nothing.
        history=f"{RESULTS}/history.jsonl",
    script:
        "../workflow/scripts/render_report.py"


rule render_html:
    input:
        report=REPORT,
        plots=PLOTS.values(),
        code=package_sources("report.html"),
    output:
        report(
            HTML_REPORT,
            caption="../reports/templates/caption.rst",
            category="Report",
        ),
    log:
        f"logs/{MODEL}/render_html.log",
    script:
        "../workflow/scripts/render_html.py"
