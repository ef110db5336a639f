"""Command line: each workflow step usable on a host without Snakemake, with the same file formats.

  portcheck dump --target npu-vllm-bf16 --model DIR --output npu.safetensors   (the seed's precision_compare.py)
  portcheck compare --baseline cpu.safetensors --target npu.safetensors        (the seed's compare_logits.py)
"""

from __future__ import annotations

import argparse
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
        _merge(raw, yaml.safe_load(config_path.read_text(encoding="utf-8")) or {})
    if enable_target:
        _merge(raw, {"targets": {enable_target: {"enabled": True}}})
    return validate_config(raw or {}, load_schema(SCHEMA), base_dir=DEFAULT_CONFIG.parent.parent)


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


def cmd_manifest(args) -> None:
    from portcheck.atomic import write_json
    from portcheck.model.checkpoint import build_manifest

    write_json(args.output, build_manifest(args.model, {"source": "local", "path": str(args.model)}))


def cmd_dump(args) -> None:
    from portcheck.atomic import write_json
    from portcheck.config import engine_settings, load_prompts, read_prompt_file
    from portcheck.env.capture import capture_env
    from portcheck.dump.run import run_target

    config = load_config(args.config, enable_target=args.target)
    prompts = read_prompt_file(Path(args.prompts)) if args.prompts else load_prompts(config)
    out = Path(args.output)
    if out.exists() and not args.force:
        raise PortcheckError(
            f"{out} already exists (a complete dump: dumps are written atomically); refusing to overwrite it. "
            "Pass --force to replace it, or choose another --output"
        )
    stem = out.with_suffix("")
    outputs = {"logits": out, "adaptation": f"{stem}.adaptation.json",
               "determinism": f"{stem}.determinism.json", "samples": f"{stem}.samples.json"}
    write_json(f"{stem}.env.json", capture_env(args.target, ROOT))
    run_target(args.target, args.model, prompts, engine_settings(config, args.target), outputs,
               greedy_tokens=config["logits"]["greedy_tokens"], determinism=config["determinism"],
               samples=config["samples"])
    print(out)


def cmd_compare(args) -> None:
    from portcheck.atomic import write_json
    from portcheck.compare.compare import compare_files

    config = load_config(args.config)
    result = compare_files(args.baseline, args.target, config["compare"]["thresholds"], config["compare"]["tie_tolerance"])
    if args.output:
        write_json(args.output, result)
    summary = {k: result.get(k) for k in ("kld_mean", "kld_p99", "top1_agreement", "cosine_min", "max_abs_err")}
    print(json.dumps({"verdict": result["verdict"]["status"], **summary}, indent=2))
    if result["verdict"]["status"] != "pass":
        sys.exit(3)


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
