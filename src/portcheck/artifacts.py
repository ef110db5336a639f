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
    "layers": "layers.safetensors",
    "modes_base": "modes/base.safetensors",
    "bench": "bench.json",
    "bench_csv": "bench.csv",
    "bench_checks": "bench_checks.json",
    "serve": "serve.json",
}
# The rule that writes each kind (the fix a reader names when an artifact is unreadable).
WRITTEN_BY = {
    "manifest": "write_manifest",
    "env": "capture_env",
    "logits": "dump_logits",
    "adaptation": "dump_logits",
    "determinism": "dump_logits",
    "samples": "dump_logits",
    "corpus": "dump_logits",
    "decode": "dump_logits",
    "decode_reference": "score_decode",
    "layers": "dump_logits",
    "modes_base": "dump_logits",
    "mode_decode": "run_mode",
    "mode_proof": "run_mode",
    "mode_reference": "score_mode",
    "mode_corpus": "run_mode",
    "mode_compare": "compare_mode",
    "bench": "run_benchmarks",
    "bench_csv": "run_benchmarks",
    "bench_checks": "check_benchmarks",
    "serve": "check_serving",
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
}
# The comparisons the config can turn off: kind -> the config section whose `enabled` does.
OPTIONAL_COMPARISONS = {"corpus_compare": "corpus", "decode_compare": "decode", "layers_compare": "layers"}


def compare_path(results: str, target: str, kind: str = "compare") -> str:
    return f"{results}/compare/{target}{COMPARE_SUFFIXES[kind]}"


# A mode run's files (<target>+<mode>): its decode dump and proof under the target's modes/, the reference's
# scores of its tokens beside them (mode "base": the target's own base-configuration run, from dump_logits).
MODE_FILES = {"mode_decode": "{mode}.safetensors", "mode_proof": "{mode}.json",
              "mode_reference": "{mode}.reference.safetensors", "mode_corpus": "{mode}.corpus.safetensors"}


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
