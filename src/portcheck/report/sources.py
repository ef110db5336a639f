"""The source line under every table: the artifact file(s) and key(s) its figures are read from, so a reader can
check any figure against the file it came from."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from portcheck.report.load import TargetData

TARGET_PLACEHOLDER = "<target>"


def cite(path: str, *keys: str) -> str:
    """'results/m/t/bench.json (latency.tpot_s, memory.weights.bytes)'."""
    return f"{path} ({', '.join(keys)})" if keys else str(path)


def every_target(targets: list[TargetData], kind: str) -> str:
    """The file of `kind` with the target's name as a placeholder, for a table that covers every target."""
    for t in targets:
        if kind in t.paths:
            return _with_placeholder(Path(t.paths[kind]), t.name)
    return f"the {kind} artifact of each target (none was given)"


def _with_placeholder(path: Path, target: str) -> str:
    if path.parent.name == target:  # results/<model>/<target>/<file>
        return str(path.parent.parent / TARGET_PLACEHOLDER / path.name)
    if path.name.startswith(target + "."):  # results/<model>/compare/<target>.json, <target>.corpus.json
        return str(path.with_name(TARGET_PLACEHOLDER + path.name[len(target):]))
    return str(path)


def shipped_record(package: str, name: str) -> tuple[dict, str]:
    """A record a make target measured and portcheck ships (package data), and its path as the report cites it;
    ({}, "") where it is absent."""
    path = resources.files(package) / name
    if not path.is_file():
        return {}, ""
    return json.loads(path.read_text(encoding="utf-8")), f"src/{package.replace('.', '/')}/{name}"
