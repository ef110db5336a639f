"""The report's input: every artifact of one model, read once into a TargetData per target. An artifact that is
absent is recorded with the reason, so each section can say "not run" and why."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from portcheck.artifacts import OPTIONAL_COMPARISONS, TARGET_FILES, read_artifact
from portcheck.dump.logits_file import read_dump_meta
from portcheck.errors import PortcheckError
from portcheck.report.format import NOT_RUN

# Per-target JSON artifacts (the dump, logits, is read apart: it is safetensors).
JSON_KINDS = ("env", "adaptation", "determinism", "samples", "bench", "bench_checks", "serve")
# Artifacts that are not per-target files under results/<model>/<target>/.
GIVEN_APART = {"compare": "comparison (compare/<target>.json)",
               "corpus_compare": "long-context comparison (compare/<target>.corpus.json)",
               "decode_compare": "decode-path comparison (compare/<target>.decode.json)",
               "layers_compare": "per-layer comparison (compare/<target>.layers.json)",
               "accuracy_compare": "task-accuracy comparison (compare/<target>.accuracy.json)",
               "vision_compare": "vision comparison (compare/<target>.vision.json)"}
NOT_GIVEN = "no {file} was given to the report (the rule that writes it did not run for this target)"


@dataclass
class TargetData:
    name: str
    role: str  # "reference" | "target"
    meta: dict | None = None  # the dump's metadata
    env: dict | None = None
    adaptation: dict | None = None
    determinism: dict | None = None
    samples: dict | None = None
    compare: dict | None = None
    corpus_compare: dict | None = None  # the long-context comparison (compare/<target>.corpus.json)
    decode_compare: dict | None = None  # the decode-path comparison (compare/<target>.decode.json)
    layers_compare: dict | None = None  # the per-layer comparison (compare/<target>.layers.json)
    accuracy_compare: dict | None = None  # the task-accuracy comparison (compare/<target>.accuracy.json)
    vision_compare: dict | None = None  # the image prompts' comparison (compare/<target>.vision.json)
    bench: dict | None = None
    bench_checks: dict | None = None  # the roofline and consistency flags derived from bench
    serve: dict | None = None
    paths: dict[str, str] = field(default_factory=dict)  # artifact kind -> the file it was read from
    absent: dict[str, str] = field(default_factory=dict)  # artifact kind -> why it is missing
    turned_off: set[str] = field(default_factory=set)  # artifact kinds the config does not ask for

    @property
    def ran(self) -> bool:
        return self.meta is not None

    def not_run(self, kind: str) -> str:
        """"not run", with the setting that turned `kind` off where the config did (e.g. bench.reference)."""
        return f"{NOT_RUN} ({self.absent[kind]})" if kind in self.turned_off else NOT_RUN

    @property
    def versions(self) -> dict:
        return (self.meta or {}).get("versions") or (self.env or {}).get("versions") or {}


def _read_present(data: TargetData, kind: str, paths: dict) -> Any:
    """The artifact of `kind` (None, with the reason in data.absent, when it was not given or is not there)."""
    if kind not in paths:
        data.absent[kind] = NOT_GIVEN.format(file=TARGET_FILES.get(kind, GIVEN_APART.get(kind, kind)))
        return None
    path = paths[kind]
    if path is None:
        data.absent[kind] = f"{kind} is not configured for this target"
        data.turned_off.add(kind)
        return None
    if not Path(path).is_file():
        data.absent[kind] = f"{path} is absent"
        return None
    data.paths[kind] = str(path)
    return read_dump_meta(path) if kind == "logits" else read_artifact(path, kind)


def load_target(name: str, paths: dict, compare_path, reference: str, optional: dict | None = None,
                turned_off_by: dict | None = None) -> TargetData:
    """paths: artifact kind -> file (None: not configured for this target; a kind left out: not produced).
    optional: the optional comparisons (artifacts.OPTIONAL_COMPARISONS) -> file, None where the config turns one
    off; a kind left out: not produced. turned_off_by: kind -> the setting that turns it off for this target
    (e.g. "bench.reference is false"), the reason the report gives."""
    data = TargetData(name, "reference" if name == reference else "target")
    given = {**paths, "compare": compare_path, **(optional or {})}
    data.meta = _read_present(data, "logits", given)
    for kind in JSON_KINDS:
        setattr(data, kind, _read_present(data, kind, given))
    if data.role == "target":
        data.compare = _read_present(data, "compare", given)
        for kind in OPTIONAL_COMPARISONS:
            setattr(data, kind, _read_present(data, kind, given))
    data.absent.update({kind: why for kind, why in (turned_off_by or {}).items() if kind in data.turned_off})
    return data


def load_targets(artifacts: dict) -> list[TargetData]:
    """Every target's data, the reference first."""
    reference = artifacts["reference"]
    if reference not in artifacts["targets"]:
        raise PortcheckError(
            f"the reference target {reference!r} has no artifacts (targets: {', '.join(artifacts['targets'])}); "
            "the report compares every target with it, so enable and run it"
        )
    names = sorted(artifacts["targets"], key=lambda n: (n != reference, list(artifacts["targets"]).index(n)))
    compare = artifacts.get("compare") or {}
    turned_off_by = artifacts.get("turned_off_by") or {}
    return [load_target(n, artifacts["targets"][n], compare.get(n), reference, _optional_comparisons(artifacts, n),
                        turned_off_by.get(n)) for n in names]


def _optional_comparisons(artifacts: dict, target: str) -> dict:
    """{kind: file, or None where the config turns it off}; a kind the run did not produce is left out."""
    found = {}
    for kind in OPTIONAL_COMPARISONS:
        files = artifacts.get(kind)  # None: turned off in the config
        if files is None or target in files:
            found[kind] = None if files is None else files[target]
    return found


def prompts_of(targets: list[TargetData]) -> list[str]:
    """The prompts, from the first dump that lists them."""
    for data in targets:
        if data.meta and data.meta.get("prompts"):
            return list(data.meta["prompts"])
    return []
