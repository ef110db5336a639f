"""Section Artifacts: every file the report was built from, with its hash and the versions that built it, and
the command that regenerates the report."""

from __future__ import annotations

import os
import shlex

from portcheck import __version__
from portcheck.hashing import sha256_file, sha256_json
from portcheck.report.format import DASH, UNKNOWN, table
from portcheck.report.load import TargetData
from portcheck.report.sections.model import short_sha

DEFAULT_CONFIGFILE = "config/config.yaml"
REGENERATE = ["snakemake", "--cores", "1"]
# Per-target artifacts in the order they are listed: the dump's after env, then what derives from them.
LISTED_KINDS = ("env", "logits", "adaptation", "determinism", "samples", "bench", "bench_checks", "serve")
PORTCHECK = f"portcheck {__version__}"


def artifacts_section(artifacts: dict, targets: list[TargetData], config: dict) -> dict:
    rows = [_row(artifacts["manifest"], "manifest", DASH, PORTCHECK)] if artifacts.get("manifest") else []
    for t in targets:
        rows += [_row(t.paths[kind], kind, t.name, _versions_text(t)) for kind in LISTED_KINDS if kind in t.paths]
        if "compare" in t.paths:
            rows.append(_row(t.paths["compare"], "compare", t.name, PORTCHECK))
    commits = sorted({t.env.get("workflow_commit") for t in targets if t.env and t.env.get("workflow_commit")})
    source = ("each file listed, hashed as it is; built with: the versions in the target's logits.safetensors "
              "metadata (versions), else its env.json (versions)")
    return {
        "table": table(["File", "Kind", "Target", "SHA-256 (prefix)", "Built with"], rows, source),
        "portcheck_version": __version__,
        "workflow_commits": commits or [UNKNOWN],
        "config_sha": short_sha(sha256_json(config)),
        "command": regenerate_command(artifacts.get("configfile")),
    }


def _row(path: str, kind: str, target: str, built_with: str) -> list[str]:
    return [str(path), kind, target, short_sha(sha256_file(path)), built_with]


def _versions_text(t: TargetData) -> str:
    present = [f"{name} {version}" for name, version in sorted(t.versions.items()) if version]
    return ", ".join(present) or UNKNOWN


def regenerate_command(configfile: str | os.PathLike | None) -> str:
    command = list(REGENERATE)
    if configfile and os.path.normpath(str(configfile)) != os.path.normpath(DEFAULT_CONFIGFILE):
        command += ["--configfile", str(configfile)]
    return shlex.join(command + ["report"])
