"""Command line: each workflow step usable on a host without Snakemake, with the same file formats.

  portcheck dump --target npu-vllm-bf16 --model DIR --output npu.safetensors   (the seed's precision_compare.py)
  portcheck compare --baseline cpu.safetensors --target npu.safetensors        (the seed's compare_logits.py)
  portcheck verify results/<model>          every artifact against the sha256 recorded when it was written
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

import yaml

from portcheck.errors import PortcheckError

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = ROOT / "config" / "config.yaml"
SCHEMA = ROOT / "config" / "schema.yaml"


def load_config(path: str | None, enable_target: str | None = None) -> dict:
    """The default config with `path` merged over it, validated once; `enable_target` is added and enabled
    (the schema's defaults fill in a target the config does not define)."""
    from portcheck.config import load_schema, validate_config

    config_path = Path(path) if path else DEFAULT_CONFIG
    if path and not config_path.is_file():
        raise PortcheckError(f"config file {path} does not exist; fix --config or leave it out for the defaults")
    # As `snakemake --configfile`: the given file is merged over the default config, so a file holding only
    # thresholds (or one target's settings) is enough.
    raw = yaml.safe_load(DEFAULT_CONFIG.read_text(encoding="utf-8")) if DEFAULT_CONFIG.is_file() else {}
    if path:
        _merge(raw, read_config_file(config_path))
    if enable_target:
        _merge(raw, {"targets": {enable_target: {"enabled": True}}})
    return validate_config(raw or {}, load_schema(SCHEMA), base_dir=DEFAULT_CONFIG.parent.parent)


def read_config_file(path: Path) -> dict:
    """A config file as a mapping; PortcheckError naming it when it is not UTF-8, not YAML or not a mapping."""
    from portcheck.config import read_utf8

    try:
        loaded = yaml.safe_load(read_utf8(path, "config file")) or {}
    except yaml.YAMLError as exc:
        raise PortcheckError(f"config file {path} is not valid YAML ({str(exc).splitlines()[0]}); fix it") from exc
    if not isinstance(loaded, dict):
        raise PortcheckError(f"config file {path} holds a YAML {type(loaded).__name__}, not a mapping of config keys "
                             "(e.g. `compare: {thresholds: ...}`)")
    return loaded


def _merge(base: dict, override: dict) -> dict:
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


def cmd_fetch(args) -> None:
    from portcheck.model.acquire import fetch_model

    fetch_model(args.source, args.dest, repo_id=args.repo_id, revision=args.revision, seed=args.seed)
    print(args.dest)


def checked_texts(config: dict) -> list[str]:
    """The texts the engines will tokenize: the prompts, and the corpus where the config scores it."""
    from portcheck.config import corpus_path, load_prompts, read_corpus_text

    corpus = [read_corpus_text(corpus_path(config, ROOT))] if config["corpus"]["enabled"] else []
    return [*load_prompts(config, ROOT), *corpus]


def cmd_manifest(args) -> None:
    from portcheck.atomic import write_json
    from portcheck.model.checkpoint import build_manifest

    config = load_config(args.config)
    write_json(args.output, build_manifest(args.model, {"source": "local", "path": str(args.model)},
                                           checked_texts(config), config["model"]["trust_remote_code"]))


def cmd_dump(args) -> None:
    from portcheck.config import engine_settings, read_prompt_file
    from portcheck.model.checkpoint import check_checkpoint

    config = load_config(args.config, enable_target=args.target)
    prompts = read_prompt_file(Path(args.prompts)) if args.prompts else None
    out = Path(args.output)
    if out.exists() and not args.force:
        raise PortcheckError(
            f"{out} already exists (a complete dump: dumps are written atomically); refusing to overwrite it. "
            "Pass --force to replace it, or choose another --output"
        )
    # The checkpoint is checked before the engine starts, as the workflow's manifest stage does.
    check_checkpoint(args.model, prompts or checked_texts(config), config["model"]["trust_remote_code"])
    stem = out.with_suffix("")
    outputs = {"logits": out, "adaptation": f"{stem}.adaptation.json",
               "determinism": f"{stem}.determinism.json", "samples": f"{stem}.samples.json",
               "env": f"{stem}.env.json"}
    with written_or_removed(outputs.values(), "portcheck dump"):
        run_dump(args, config, prompts, engine_settings(config, args.target), outputs)
    print(out)


def run_dump(args, config: dict, prompts: list[str] | None, settings, outputs: dict) -> None:
    from portcheck.atomic import write_json
    from portcheck.config import load_prompts
    from portcheck.dump.run import run_target
    from portcheck.env.capture import capture_env
    from portcheck.targets import without_toggles

    write_json(outputs["env"], capture_env(args.target, ROOT))
    run_target(args.target, args.model, prompts or load_prompts(config, ROOT), settings,
               {kind: path for kind, path in outputs.items() if kind != "env"},
               greedy_tokens=config["logits"]["greedy_tokens"], determinism=without_toggles(config["determinism"]),
               samples=without_toggles(config["samples"]))


@contextlib.contextmanager
def written_or_removed(paths, command: str):
    """Record the hashes of what the block wrote; if it fails, remove what it wrote (a failed dump leaves no side
    file that reads as part of a dump)."""
    from portcheck.artifacts import record_hash

    paths = [Path(path) for path in paths]
    before = {path: _identity(path) for path in paths}
    try:
        yield
    except BaseException:
        for path in paths:
            if _identity(path) not in (None, before[path]):  # written (atomically: a new inode) by the block
                path.unlink()
        raise
    for path in paths:
        record_hash(path, command)


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_mtime_ns


def cmd_compare(args) -> None:
    from portcheck.artifacts import check_artifacts, record_hash
    from portcheck.atomic import write_json
    from portcheck.compare.compare import compare_files

    config = load_config(args.config)
    check_artifacts([args.baseline, args.target], "portcheck compare", missing_ok=True)
    result = compare_files(args.baseline, args.target, config["compare"]["thresholds"], config["compare"]["tie_tolerance"])
    if args.output:
        write_json(args.output, result)
        record_hash(args.output, "portcheck compare")
    summary = {k: result.get(k) for k in ("kld_mean", "kld_p99", "top1_agreement", "cosine_min", "max_abs_err")}
    print(json.dumps({"verdict": result["verdict"]["status"], **summary}, indent=2))
    status = result["verdict"]["status"]
    if status != "pass":
        sys.exit(4 if status == "inconclusive" else 3)  # inconclusive is no pass, and no proven failure


def cmd_verify(args) -> None:
    """Every recorded artifact under the given folders against its hash; exit 1 naming what is absent or changed."""
    from portcheck.artifacts import UNRECORDED, artifact_state, check_artifacts, recorded_artifacts

    folders = [Path(folder) for folder in args.paths or [p for p in DEFAULT_VERIFIED if Path(p).exists()]]
    missing = [str(folder) for folder in folders if not folder.exists()]
    if missing or not folders:
        raise PortcheckError(f"{', '.join(missing or DEFAULT_VERIFIED)} does not exist; give the results folder of "
                             "a run (e.g. results/tiny-qwen3.5), or run the workflow first")
    recorded = [path for folder in folders for path in recorded_artifacts(folder)]
    unrecorded = [path for folder in folders for path in _artifact_files(folder)
                  if path not in recorded and artifact_state(path) == UNRECORDED]
    try:
        check_artifacts(recorded, "portcheck verify")
    except PortcheckError as error:
        print(f"portcheck: {error}", file=sys.stderr)
        sys.exit(1)
    print(f"{len(recorded)} artifact(s) match the sha256 recorded when they were written")
    if unrecorded:
        print(f"{len(unrecorded)} file(s) have no recorded hash (written before portcheck recorded hashes, or by "
              f"hand), not checked:\n  " + "\n  ".join(map(str, unrecorded)))


DEFAULT_VERIFIED = ("results", "reports")


def _artifact_files(folder: Path) -> list[Path]:
    """The files under `folder` a rule writes (not hidden bookkeeping, the run history, the report's templates)."""
    from portcheck.artifacts import HISTORY

    files = [folder] if folder.is_file() else sorted(folder.rglob("*"))
    return [p for p in files if p.is_file() and not p.name.startswith((".", HISTORY)) and "templates" not in p.parts]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="portcheck", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    fetch = sub.add_parser("fetch", help="build the tiny model or download a checkpoint")
    fetch.add_argument("--source", choices=["tiny", "tiny-qwen3", "hf", "modelscope"], default="tiny")
    fetch.add_argument("--dest", required=True)
    fetch.add_argument("--repo-id", default="Qwen/Qwen3.5-0.8B-Base")
    fetch.add_argument("--revision", default="main")
    fetch.add_argument("--seed", type=int, default=0)
    fetch.set_defaults(func=cmd_fetch)

    manifest = sub.add_parser("manifest", help="describe a checkpoint directory (files, hashes, parameters)")
    manifest.add_argument("--model", required=True)
    manifest.add_argument("--output", required=True)
    manifest.add_argument("--config", help="config YAML whose prompts and corpus the tokenizer is checked on "
                                           "(default: config/config.yaml)")
    manifest.set_defaults(func=cmd_manifest)

    dump = sub.add_parser("dump", help="dump one target's logits on this host")
    dump.add_argument("--target", required=True, help="<device>-<engine>-<dtype>, e.g. npu-vllm-bf16")
    dump.add_argument("--model", required=True, help="checkpoint directory")
    dump.add_argument("--output", required=True, help="logits .safetensors path; side files are written beside it")
    dump.add_argument("--prompts", help="text file, one prompt per line (default: the config's prompts)")
    dump.add_argument("--config", help="config YAML (default: config/config.yaml)")
    dump.add_argument("--force", action="store_true", help="replace an existing dump at --output")
    dump.set_defaults(func=cmd_dump)

    compare = sub.add_parser("compare", help="compare a target dump with a baseline dump")
    compare.add_argument("--baseline", required=True)
    compare.add_argument("--target", required=True)
    compare.add_argument("--output", help="write the full comparison JSON here")
    compare.add_argument("--config", help="config YAML for thresholds (default: config/config.yaml)")
    compare.set_defaults(func=cmd_compare)

    verify = sub.add_parser("verify", help="check every artifact against the sha256 recorded when it was written")
    verify.add_argument("paths", nargs="*", help="folders or files to check (default: results reports)")
    verify.set_defaults(func=cmd_verify)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except PortcheckError as error:
        print(f"portcheck: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
