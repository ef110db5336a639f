# The markdown report as one HTML page with its plots embedded, for `snakemake --report report.html`.


rule render_html:
    input:
        report=REPORT,
        plots=PLOTS.values(),
        code=package_sources("html"),
    output:
        report(
            f"{REPORTS}/report.html",
            caption="../reports/templates/caption.rst",
            category="Report",
        ),
    log:
        f"logs/{MODEL}/render_html.log",
    script:
        "../workflow/scripts/render_html.py"
