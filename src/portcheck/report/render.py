"""The markdown report. `build_context` reads every artifact of one model and has each section module
(portcheck.report.sections) turn them into display tables (lists of strings); `render_report` lays them out with
a Jinja template. Nothing time-dependent goes in, so the same artifacts give a byte-identical report.

Anything absent is said to be absent ("absent", "not run", "unknown") and never counts as a pass."""

from __future__ import annotations

import os
import re
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from portcheck.artifacts import OPTIONAL_COMPARISONS, check_artifacts, read_artifact
from portcheck.atomic import atomic_path
from portcheck.report.format import cell, markdown_table
from portcheck.report.load import load_targets, prompts_of
from portcheck.report.sections.accuracy import accuracy_section
from portcheck.report.sections.vision import vision_section
from portcheck.report.sections.adaptation import adaptation_section
from portcheck.report.sections.artifacts import artifacts_section
from portcheck.report.sections.determinism import determinism_section
from portcheck.report.sections.environment import environment_section
from portcheck.report.sections.model import model_section
from portcheck.report.sections.layers import layers_section
from portcheck.report.sections.modes import modes_section
from portcheck.report.sections.positions import decode_section, long_context_section
from portcheck.report.sections.power import power_section
from portcheck.report.sections.performance import performance_section
from portcheck.report.sections.plots import plots_section
from portcheck.report.sections.precision import precision_section
from portcheck.report.sections.predictions import predictions_section
from portcheck.report.sections.samples import samples_section
from portcheck.report.sections.summary import summary_section
from portcheck.report.sections.theory import theory_section
from portcheck.report.sections.three_way import three_way_section

# The report's sections in order: (key, title). Their numbers, headings and anchors are made from this list only;
# the template refers to them by key. History comes last: it is shown only when the render rule records one.
SECTIONS = (
    ("summary", "Summary"),
    ("power", "What a pass is worth"),
    ("model", "Model and configuration"),
    ("environment", "Environment"),
    ("adaptation", "Adaptation checklist"),
    ("precision", "Precision comparison"),
    ("long_context", "Long-context precision"),
    ("decode", "Decode-path precision"),
    ("modes", "Engine modes"),
    ("layers", "Where it diverges (per layer)"),
    ("three_way", "No worse than the GPU port (msprobe three-way)"),
    ("predictions", "Predicted tokens per prompt"),
    ("determinism", "Determinism"),
    ("samples", "Generation samples"),
    ("theory", "bf16 vs fp32: Theory (not a measurement)"),
    ("performance", "Performance"),
    ("accuracy", "Task accuracy (lm-eval)"),
    ("vision", "Vision tower"),
    ("plots", "Plots"),
    ("artifacts", "Artifacts"),
    ("history", "History"),
)


def anchor(heading: str) -> str:
    """The link target GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    return "#" + re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def section_headings() -> dict[str, dict]:
    """key -> {number, title, heading ('5. Precision comparison'), anchor ('#5-precision-comparison')}."""
    headings = {}
    for number, (key, title) in enumerate(SECTIONS, start=1):
        heading = f"{number}. {title}"
        headings[key] = {"number": number, "title": title, "heading": heading, "anchor": anchor(heading)}
    return headings


def build_context(artifacts: dict, config: dict) -> dict:
    """Every section's data, from the artifacts alone. `config` is the validated config (schema defaults
    filled in). Refuses (PortcheckError) an artifact that is not what its rule wrote; an absent one is reported
    absent (in a workflow run Snakemake sees that every input exists, and the job checks each against its hash)."""
    check_artifacts(report_inputs(artifacts), "the report", missing_ok=True)
    targets = load_targets(artifacts)
    manifest_path = artifacts.get("manifest")
    manifest = read_artifact(manifest_path, "manifest") if manifest_path else None
    prompts = prompts_of(targets)
    model_name = artifacts["model"]
    modes = modes_section(artifacts.get("modes"))
    return {
        "title": config["report"]["title"] or f"{model_name} port check",
        "model_name": model_name,
        "reference": artifacts["reference"],
        "targets": [t.name for t in targets],
        "summary": summary_section(targets, manifest, manifest_path, prompts, modes.get("by_target") or {}),
        "power": power_section(),
        "model": model_section(manifest, manifest_path, targets, artifacts.get("context"), artifacts.get("mtp_head")),
        "environment": environment_section(targets),
        "adaptation": adaptation_section(targets),
        "precision": precision_section(targets, prompts),
        "long_context": long_context_section(targets),
        "decode": decode_section(targets),
        "modes": modes,
        "layers": layers_section(targets),
        "three_way": three_way_section(targets, config["compare"]["three_way"]),
        "predictions": predictions_section(targets, prompts),
        "determinism": determinism_section(targets),
        "samples": samples_section(targets),
        "theory": theory_section(targets),
        "performance": performance_section(targets),
        "accuracy": accuracy_section(targets, bool(config["accuracy"]["enabled"])),
        "vision": vision_section(targets),
        "plots": plots_section(artifacts.get("plots") or {}),
        "artifacts": artifacts_section(artifacts, targets, config),
        "history": None,  # the run history (portcheck.report.history), filled in by the render rule
    }


def report_inputs(artifacts: dict) -> list[str]:
    """Every artifact file the report reads: the manifest, the context and MTP head measurements, each target's files,
    every comparison, every mode run's."""
    files = [artifacts.get("manifest"), artifacts.get("context"), artifacts.get("mtp_head"),
             *(artifacts.get("modes") or {}).get("runs", {}).values()]
    files += [path for paths in artifacts["targets"].values() for path in paths.values()]
    files += [path for kind in ("compare", *OPTIONAL_COMPARISONS) for path in (artifacts.get(kind) or {}).values()]
    return [str(path) for path in files if path]


def make_environment(template_dir: str | os.PathLike) -> Environment:
    env = Environment(
        loader=FileSystemLoader(str(template_dir)),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,  # markdown, not HTML: `cell` does the escaping that matters
    )
    env.filters.update(cell=cell, table=markdown_table)
    return env


def render_report(template_path: str | os.PathLike, out_path: str | os.PathLike, context: dict) -> None:
    """Render the template to out_path atomically, with the section headings. Plot links are checked against
    out_path's folder, so the report never links to a picture that is not there."""
    template_path, out_path = Path(template_path), Path(out_path)
    plots = [{**plot, "exists": (out_path.parent / plot["path"]).is_file()} for plot in context["plots"]]
    context = {**context, "plots": plots, "sections": section_headings()}
    text = make_environment(template_path.parent).get_template(template_path.name).render(**context)
    with atomic_path(out_path) as tmp:
        tmp.write_text(text, encoding="utf-8")
