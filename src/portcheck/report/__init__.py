"""Stage report (rules/report.smk): load the artifacts, build each section, render markdown, plots and HTML."""
