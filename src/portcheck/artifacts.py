"""Every artifact the workflow writes: its kind, where it lives under results/, which rule writes it, and one
reader with one error policy (a missing or unreadable artifact names the file and the rule that rewrites it).
Kept free of heavy imports: rules/common.smk imports it while Snakemake parses the workflow."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from portcheck.errors import PortcheckError

MANIFEST = "manifest.json"
CONTEXT = "context.json"
MTP_HEAD = "mtp_head.json"
# Per-model artifacts: kind -> file name under results/<model>/.
MODEL_FILES = {"manifest": MANIFEST, "context": CONTEXT, "mtp_head": MTP_HEAD}
HISTORY = "history.jsonl"
# Per-target artifacts: kind -> file name under results/<model>/<target>/.
TARGET_FILES = {
    "env": "env.json",
    "logits": "logits.safetensors",
    "adaptation": "adaptation.json",
    "determinism": "determinism.json",
    "samples": "samples.json",
    "corpus": "corpus.safetensors",
    "decode": "decode.safetensors",
    "decode_reference": "decode_reference.safetensors",
    "decode_floor": "decode_floor.safetensors",
    "layers": "layers.safetensors",
    "modes_base": "modes/base.safetensors",
    "bench": "bench.json",
    "bench_csv": "bench.csv",
    "bench_checks": "bench_checks.json",
    "serve": "serve.json",
    "accuracy": "accuracy.json",
    "vision": "vision.safetensors",
    "vision_blocks": "vision_blocks.safetensors",
}
# The rule that writes each kind (the fix a reader names when an artifact is unreadable).
WRITTEN_BY = {
    "manifest": "write_manifest",
    "context": "measure_context",
    "mtp_head": "measure_mtp",
    "env": "capture_env",
    "logits": "dump_logits",
    "adaptation": "dump_logits",
    "determinism": "dump_logits",
    "samples": "dump_logits",
    "corpus": "dump_logits",
    "decode": "dump_logits",
    "decode_reference": "score_decode",
    "decode_floor": "score_decode_floor",
    "layers": "dump_logits",
    "modes_base": "dump_logits_with_mode_base",
    "mode_decode": "run_mode",
    "mode_proof": "run_mode",
    "mode_reference": "score_mode",
    "mode_mtp_reference": "score_mtp",
    "mode_corpus": "run_mode",
    "mode_compare": "compare_mode",
    "bench": "run_benchmarks",
    "bench_csv": "run_benchmarks",
    "bench_checks": "check_benchmarks",
    "serve": "check_serving",
    "accuracy": "evaluate_accuracy",
    "accuracy_compare": "compare_accuracy",
    "vision": "dump_vision",
    "vision_blocks": "dump_vision",
    "vision_compare": "compare_vision",
    "compare": "compare_logits",
    "corpus_compare": "compare_corpus",
    "decode_compare": "compare_decode",
    "layers_compare": "compare_layers",
}
# What one dump_logits job writes (one engine start), in its output order; then "corpus" and "decode" where
# the config enables them.
DUMP_KINDS = ("logits", "adaptation", "determinism", "samples")
CORPUS_KIND, DECODE_KIND, LAYERS_KIND, MODES_KIND = "corpus", "decode", "layers", "modes_base"
# Per-target kinds every report reads; bench_checks and serve are added by the report rule where they apply.
REPORTED_KINDS = ("env", *DUMP_KINDS, "bench")


def target_path(results: str, target: str, kind: str) -> str:
    return f"{results}/{target}/{TARGET_FILES[kind]}"


# Each target's comparisons with the reference: kind -> the end of its file name (results/<model>/compare/<target>...).
COMPARE_SUFFIXES = {
    "compare": ".json",
    "corpus_compare": ".corpus.json",
    "decode_compare": ".decode.json",
    "layers_compare": ".layers.json",
    "accuracy_compare": ".accuracy.json",
    "vision_compare": ".vision.json",
}
# The comparisons the config can turn off: kind -> the config section whose `enabled` does.
OPTIONAL_COMPARISONS = {"corpus_compare": "corpus", "decode_compare": "decode", "layers_compare": "layers",
                        "accuracy_compare": "accuracy", "vision_compare": "vision"}


def compare_path(results: str, target: str, kind: str = "compare") -> str:
    return f"{results}/compare/{target}{COMPARE_SUFFIXES[kind]}"


# A mode run's files (<target>+<mode>): its decode dump and proof under the target's modes/, the reference's
# scores of its tokens beside them (mode "base": the target's own base-configuration run, from dump_logits).
MODE_FILES = {"mode_decode": "{mode}.safetensors", "mode_proof": "{mode}.json",
              "mode_reference": "{mode}.reference.safetensors", "mode_corpus": "{mode}.corpus.safetensors",
              "mode_mtp_reference": "{mode}.reference_acceptance.json"}


def mode_path(results: str, target: str, mode: str, kind: str) -> str:
    return f"{results}/{target}/modes/{MODE_FILES[kind].format(mode=mode)}"


def mode_compare_path(results: str, run: str) -> str:
    return f"{results}/compare/{run}.mode.json"


def read_artifact(path: str | os.PathLike, kind: str) -> Any:
    """A JSON artifact of `kind`; PortcheckError naming the file and its rule when it is absent or not JSON."""
    rule = WRITTEN_BY.get(kind, "the rule that writes it")
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise PortcheckError(f"{kind} artifact {path} is absent; rerun the workflow (rule {rule})") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PortcheckError(
            f"{path} is not valid JSON ({exc}); delete it and rerun the workflow (rule {rule} rewrites it)"
        ) from exc


# Integrity: each artifact's sha256, recorded when its rule writes it (workflow.script records every job's
# outputs) in a hidden sidecar beside it, `.<name>.sha256` (JSON: sha256, bytes, mtime_ns, rule). Readers check it,
# so a report never stands on an artifact that is missing, cut short or edited after its rule wrote it.
OK, ABSENT, CHANGED, UNRECORDED = "ok", "absent", "changed", "unrecorded"


def sidecar_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_name(f".{path.name}.sha256")


def record_hash(path: str | os.PathLike, rule: str) -> None:
    """Record `path`'s hash as written by `rule` (a workflow rule's name, or a command line: "portcheck dump"). A
    directory is not recorded: a checkpoint's manifest lists its files' hashes."""
    from portcheck.atomic import write_json
    from portcheck.hashing import sha256_file

    path = Path(path)
    if not path.is_file():
        return
    stat = path.stat()
    write_json(sidecar_path(path), {"sha256": sha256_file(path), "bytes": stat.st_size,
                                    "mtime_ns": stat.st_mtime_ns, "rule": rule})


def _recorded(path: Path) -> dict | None:
    try:
        recorded = json.loads(sidecar_path(path).read_text(encoding="utf-8"))
        return recorded if {"sha256", "bytes", "mtime_ns"} <= set(recorded) else None
    except (OSError, ValueError):
        return None


def artifact_state(path: str | os.PathLike, quick: bool = False) -> str:
    """OK, ABSENT, CHANGED (not the bytes its rule wrote) or UNRECORDED (no hash recorded: written before portcheck
    recorded hashes, or a storage plugin's local copy). quick: a file whose size and mtime are those recorded is
    taken as unchanged without hashing (what a no-op run can afford)."""
    from portcheck.hashing import sha256_file

    path = Path(path)
    if not path.is_file():
        return ABSENT
    recorded = _recorded(path)
    if recorded is None:
        return UNRECORDED
    stat = path.stat()
    if stat.st_size != recorded["bytes"]:
        return CHANGED
    if quick and stat.st_mtime_ns == recorded["mtime_ns"]:
        return OK
    if sha256_file(path) != recorded["sha256"]:
        return CHANGED
    if stat.st_mtime_ns != recorded["mtime_ns"]:  # touched, not changed: the next quick check needs no hashing
        _rewrite_sidecar(path, {**recorded, "mtime_ns": stat.st_mtime_ns})
    return OK


def _rewrite_sidecar(path: Path, recorded: dict) -> None:
    """A cache refresh, best effort."""
    from portcheck.atomic import write_json

    try:
        write_json(sidecar_path(path), recorded)
    except OSError:
        pass  # a read-only store: the check stays right, only slower


def writer_of(path: str | os.PathLike) -> str:
    """The rule that writes `path`: as recorded, else from its name."""
    recorded = _recorded(Path(path)) or {}
    if recorded.get("rule"):
        return recorded["rule"]
    kind = kind_of(str(path))
    return WRITTEN_BY.get(kind, "the rule that writes it") if kind else "the rule that writes it"


def kind_of(path: str) -> str | None:
    """The artifact kind a results path holds (None: not one of artifacts.py's)."""
    path = path.replace(os.sep, "/")
    per_model = [kind for kind, name in MODEL_FILES.items() if path.endswith("/" + name)]
    if per_model:
        return per_model[0]
    if "/compare/" in path:
        if path.endswith(".mode.json"):
            return "mode_compare"
        by_length = sorted(COMPARE_SUFFIXES.items(), key=lambda item: -len(item[1]))
        return next((kind for kind, suffix in by_length if path.endswith(suffix)), None)
    if "/modes/" in path and not path.endswith("/" + TARGET_FILES[MODES_KIND]):
        by_length = sorted(MODE_FILES.items(), key=lambda item: -len(item[1]))
        return next((kind for kind, name in by_length if path.endswith(name.format(mode=""))), None)
    return next((kind for kind, name in TARGET_FILES.items() if path.endswith("/" + name)), None)


def damaged(paths, quick: bool = False, missing_ok: bool = False) -> dict[str, str]:
    """{path: ABSENT or CHANGED} for the paths that are not as their rule wrote them (missing_ok: CHANGED only)."""
    refused = (CHANGED,) if missing_ok else (ABSENT, CHANGED)
    states = {str(path): artifact_state(path, quick) for path in paths}
    return {path: state for path, state in states.items() if state in refused}


def _is_command(writer: str) -> bool:
    return writer.startswith("portcheck ")


def rebuild_command(paths) -> str:
    """What rebuilds `paths`: Snakemake forcing their jobs (and what follows), or for files the command line wrote,
    that command."""
    if any(_is_command(writer_of(path)) for path in paths):
        return "rerun the portcheck command that wrote them (with --force where it refuses to overwrite)"
    return f"snakemake --cores 1 report --forcerun {' '.join(sorted(paths))}"


def describe_damage(found: dict[str, str]) -> list[str]:
    """One line per damaged artifact: the file, what is wrong, what rewrites it."""
    what = {ABSENT: "is absent", CHANGED: "differs from the sha256 recorded when it was written (edited, cut short "
                                          "or replaced)"}
    lines = []
    for path, state in sorted(found.items()):
        writer = writer_of(path)
        lines.append(f"{path} {what[state]} ({f'`{writer}`' if _is_command(writer) else f'rule {writer}'} "
                     "rewrites it)")
    return lines


def check_artifacts(paths, reader: str, missing_ok: bool = False) -> None:
    """PortcheckError naming every artifact among `paths` that is absent (unless missing_ok) or changed, and the
    command that rebuilds them."""
    found = damaged(paths, missing_ok=missing_ok)
    if found:
        raise PortcheckError(
            f"{reader} refuses artifacts that are not what their rule wrote:\n  - "
            + "\n  - ".join(describe_damage(found)) + f"\nrebuild them: {rebuild_command(found)}"
        )


def recorded_artifacts(folder: str | os.PathLike) -> list[Path]:
    """Every artifact under `folder` (or `folder` itself, a file) whose hash was recorded, present or not."""
    folder = Path(folder)
    if folder.is_file():
        return [folder] if sidecar_path(folder).is_file() else []
    return sorted(side.with_name(side.name[1:-len(".sha256")]) for side in folder.rglob(".*.sha256"))
