"""Config validation with defaults and messages that name the key, the allowed values and the fix,
plus the accessors the rules and the CLI share (enabled targets, engine settings, prompts)."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

from portcheck.benchmarks.plan import bench_problems
from portcheck.engines.settings import EngineSettings
from portcheck.errors import PortcheckError
from portcheck.model.checkpoint import load_model_config, local_model_problems, text_settings
from portcheck.modes.catalog import full_vocab_problems, run_problems
from portcheck.targets import DEVICES, DTYPES, ENGINES, parse_target

ENGINE_SETTING_KEYS = (
    "threads",
    "seed",
    "max_model_len",
    "enforce_eager",
    "gpu_memory_utilization",
    "max_num_batched_tokens",
    "max_num_seqs",
    "language_model_only",
    "logprobs_topk",
    "in_process",
)


# libyaml's safe loader where PyYAML was built with it: the pure-Python one was a tenth of a no-op run.
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_yaml(path: str | Path):
    return yaml.load(Path(path).read_text(encoding="utf-8"), Loader=SAFE_LOADER)


def load_schema(path: str | Path, cache: str | Path | None = None) -> dict:
    """The schema; with `cache`, kept there as JSON while the file's mtime and size stay the same (its YAML parse
    was 10 ms of a 1.45 s no-op run). A cache that does not read as one is replaced."""
    if cache is None:
        return load_yaml(path)
    stat = Path(path).stat()
    key = [str(Path(path).resolve()), stat.st_mtime_ns, stat.st_size]
    try:
        kept = json.loads(Path(cache).read_text(encoding="utf-8"))
        if kept["key"] == key and isinstance(kept["schema"], dict):
            return kept["schema"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    from portcheck.atomic import write_json

    schema = load_yaml(path)
    write_json(cache, {"key": key, "schema": schema})
    return schema


def validate_config(config: dict, schema: dict, base_dir: str | Path = ".", valid_cache: str | Path | None = None
                    ) -> dict:
    """Return the config with defaults filled in, or raise PortcheckError listing every problem. `valid_cache`: a
    folder remembering the (config, schema) pairs the schema passed (schema_problems)."""
    config = coerce_strings(copy.deepcopy(config), schema)
    problems = schema_problems(config, schema, valid_cache)
    if problems:
        raise PortcheckError("invalid config:\n  - " + "\n  - ".join(sorted(set(problems))))
    _fill_defaults(config, schema, schema)
    default_runs = schema["properties"]["modes"]["properties"]["runs"].get("default", [])
    problems = _semantic_problems(config, Path(base_dir), default_runs)
    if problems:
        raise PortcheckError("invalid config:\n  - " + "\n  - ".join(problems))
    return config


_BOOLEANS = {"true": True, "yes": True, "false": False, "no": False}
_NULLS = ("null", "none", "~", "")


def coerce_strings(config: Any, schema: dict, node: dict | None = None) -> Any:
    """Snakemake parses `--config key=value` (and a profile's `config:` mapping) with YAML's base loader, so
    nested values arrive as strings ("True", "512"). Convert a string where the schema does not allow one."""
    node = _resolve(schema if node is None else node, schema)
    if isinstance(config, dict):
        for key, value in config.items():
            sub = node.get("properties", {}).get(key)
            if sub is None and isinstance(node.get("additionalProperties"), dict):
                sub = node["additionalProperties"]
            if sub is not None:
                config[key] = coerce_strings(value, schema, sub)
        return config
    if isinstance(config, list) and isinstance(node.get("items"), dict):
        return [coerce_strings(item, schema, node["items"]) for item in config]
    types = node.get("type", [])
    types = [types] if isinstance(types, str) else list(types)
    if not isinstance(config, str) or not types or "string" in types:
        return config
    text = config.strip()
    if "boolean" in types and text.lower() in _BOOLEANS:
        return _BOOLEANS[text.lower()]
    if "null" in types and text.lower() in _NULLS:
        return None
    for kind, convert in (("integer", int), ("number", float)):
        if kind in types:
            try:
                return convert(text)
            except ValueError:
                pass
    return config


def override_problems(overrides: dict, defined_targets, source: str = "--config") -> list[str]:
    """Targets named by command-line/profile overrides must be defined in a config file: an override that
    names an undefined target is almost always a typo, and would otherwise run with defaults nobody chose."""
    named = (overrides or {}).get("targets") or {}
    if not isinstance(named, dict):
        return []
    defined = list(defined_targets)
    return [
        f"{source} names target {name!r}, which the config file does not define (defined: "
        f"{', '.join(defined) or 'none'}); fix the name, or define the target in the config file first"
        for name in named if name not in defined
    ]


def schema_problems(config: dict, schema: dict, valid_cache: str | Path | None = None) -> list[str]:
    """What the JSON schema finds wrong with `config`. A pair that passed is remembered in `valid_cache` by the
    SHA-256 of both: the same pair passes again without importing jsonschema (~30 ms of a 1.1 s no-op run). Only
    passes are kept, so a problem is always described by jsonschema itself; defaults and the checks against files
    on disk (_semantic_problems) run every time."""
    marker = None
    if valid_cache is not None:
        pair = json.dumps([config, schema], sort_keys=True, default=repr).encode()
        marker = Path(valid_cache) / hashlib.sha256(pair).hexdigest()
        if marker.is_file():
            return []
    import jsonschema  # here: a remembered pair needs none of it

    problems = [_describe(error, schema) for error in jsonschema.Draft202012Validator(schema).iter_errors(config)]
    if marker is not None and not problems:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()  # empty: its name is the record, so a torn write cannot record a pass
    return problems


def _key_path(path) -> str:
    return ".".join(str(p) for p in path) or "(top level)"


def _describe(error, schema: dict) -> str:
    """A jsonschema.ValidationError as a message that names the key, what is allowed and the fix."""
    where = _key_path(error.absolute_path)
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        unknown = sorted(set(error.instance) - set(allowed))
        prefix = f"{where}." if error.absolute_path else ""
        return f"unknown config key(s) {', '.join(prefix + k for k in unknown)}; allowed here: {', '.join(allowed)}"
    if "propertyNames" in error.relative_schema_path:
        return (
            f"target name {error.instance!r} under {where} is not <device>-<engine>-<dtype>; devices "
            f"{'/'.join(DEVICES)}, engines {'/'.join(ENGINES)}, dtypes {'/'.join(DTYPES)} (e.g. npu-vllm-bf16)"
        )
    if error.validator == "type":
        return f"config key {where} must be of type {error.validator_value}, got {error.instance!r}"
    if error.validator == "enum":
        return f"config key {where} must be one of {error.validator_value}, got {error.instance!r}"
    return f"config key {where}: {error.message}"


def _resolve(node: dict, root: dict) -> dict:
    ref = node.get("$ref")
    if ref:
        node = root
        for part in ref.lstrip("#/").split("/"):
            node = node[part]
    return node


def _fill_defaults(instance: Any, node: dict, root: dict) -> None:
    """Fill schema defaults into `instance` in place, recursing into objects (as snakemake's validate does)."""
    node = _resolve(node, root)
    if not isinstance(instance, dict):
        return
    for key, sub in node.get("properties", {}).items():
        sub = _resolve(sub, root)
        if key not in instance and "default" in sub:
            instance[key] = copy.deepcopy(sub["default"])
        if key in instance:
            _fill_defaults(instance[key], sub, root)
    extra = node.get("additionalProperties")
    if isinstance(extra, dict):
        for key, value in instance.items():
            if key not in node.get("properties", {}):
                _fill_defaults(value, extra, root)


def _semantic_problems(config: dict, base_dir: Path, default_runs: list[str]) -> list[str]:
    problems = []
    targets = config["targets"]
    reference = config["reference"]
    if reference not in targets:
        problems.append(
            f"reference target {reference!r} is not defined under targets (defined: {', '.join(targets) or 'none'}); "
            "define it or set `reference` to one of them"
        )
    elif not targets[reference]["enabled"]:
        problems.append(f"reference target {reference!r} is not enabled; set targets.{reference}.enabled: true")
    if not any(t["enabled"] for t in targets.values()):
        problems.append("no target is enabled; enable at least the reference under `targets`")
    try:
        if not load_prompts(config, base_dir):
            problems.append("the prompt list is empty; give prompts under prompts.list or a prompts.file")
    except PortcheckError as exc:
        problems.append(str(exc))
    problems.extend(corpus_problems(config, base_dir))
    problems.extend(three_way_problems(config))
    problems.extend(run_problems(config))
    problems.extend(bench_problems(config))
    problems.extend(run_target_problems(config, default_runs))
    problems.extend(mtp_acceptance_problems(config["modes"]))
    model = config["model"]
    if model["source"] == "local":
        local = local_model_problems(model.get("path"), base_dir)
        problems.extend(local or full_vocab_problems(config, local_vocab(Path(base_dir) / model["path"])))
    return problems


def local_vocab(model_dir: Path) -> int | None:
    """A local checkpoint's vocabulary, known before any job: the full-vocabulary checks run at validation."""
    return text_settings(load_model_config(model_dir)).get("vocab_size")


def read_prompt_file(path: Path) -> list[str]:
    """One prompt per line; blank lines are ignored."""
    if not path.is_file():
        raise PortcheckError(f"prompts file {path} does not exist or is not a file; fix the path or use the "
                             "config's prompts.list")
    return [line for line in read_utf8(path, "prompts file").splitlines() if line.strip()]


def read_utf8(path: Path, what: str) -> str:
    """A text file's contents; PortcheckError naming it when it is not UTF-8 (a binary file, another encoding)."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise PortcheckError(
            f"{what} {path} is not UTF-8 text ({exc.reason} at byte {exc.start}); give a text file, converting "
            f"another encoding with e.g. iconv -f <its encoding> -t UTF-8"
        ) from exc


def load_prompts(config: dict, base_dir: str | Path = ".") -> list[str]:
    file = config["prompts"].get("file")
    if file:
        return read_prompt_file(Path(base_dir) / file)
    blank = [i for i, p in enumerate(config["prompts"]["list"]) if not p.strip()]
    if blank:
        raise PortcheckError(
            f"prompts.list entries {', '.join(map(str, blank))} are empty or whitespace only (no tokens to score); "
            "remove them"
        )
    return list(config["prompts"]["list"])


# The held-out text scored when corpus.file is not set (English and Chinese, written for portcheck).
DEFAULT_CORPUS = Path(__file__).resolve().parent / "dump" / "data" / "heldout_corpus.txt"


def corpus_path(config: dict, base_dir: str | Path = ".") -> Path:
    file = config["corpus"]["file"]
    return Path(base_dir) / file if file else DEFAULT_CORPUS


def read_corpus_text(path: Path) -> str:
    """The corpus as text; PortcheckError naming the file when it is absent, empty or not UTF-8."""
    if not path.is_file():
        raise PortcheckError(f"corpus file {path} does not exist; fix corpus.file (null: the shipped held-out text)")
    text = read_utf8(path, "corpus file")
    if not text.strip():
        raise PortcheckError(
            f"corpus file {path} is empty; give a text to cut into windows, or set corpus.enabled: false"
        )
    return text


def run_target_problems(config: dict, default_runs: list[str]) -> list[str]:
    """modes.runs must name enabled targets: a run of another target cannot run. The shipped default runs are the
    exception (a config that disables their target still validates, and the report lists them as not run)."""
    if not config["modes"]["enabled"] or config["modes"]["runs"] == default_runs:
        return []
    problems = []
    for name in config["modes"]["runs"]:
        target = name.partition("+")[0]
        if target not in config["targets"]:
            problems.append(f"modes.runs names {name}, but target {target} is not defined (defined: "
                            f"{', '.join(config['targets'])}); fix the name or define the target")
        elif not config["targets"][target]["enabled"]:
            problems.append(f"modes.runs names {name}, but target {target} is not enabled; enable it "
                            f"(targets.{target}.enabled: true) or remove the run")
    return problems


def mtp_acceptance_problems(modes: dict) -> list[str]:
    """The golden per-position acceptance rates name one rate per draft position the mtp runs draft."""
    golden = modes["mtp_acceptance"].get("golden")
    if golden and len(golden) > int(modes["spec_tokens"]):
        return [f"modes.mtp_acceptance.golden gives {len(golden)} per-position rates, but the mtp runs draft "
                f"{modes['spec_tokens']} tokens (modes.spec_tokens); give at most {modes['spec_tokens']} rates or "
                f"raise modes.spec_tokens to {len(golden)}"]
    return []


def three_way_problems(config: dict) -> list[str]:
    """Targets named for msprobe's three-way comparison must be enabled and compared with the reference."""
    problems = []
    for role, name in config["compare"]["three_way"].items():
        target = config["targets"].get(name) if name else None
        if name and (target is None or not target["enabled"] or name == config["reference"]):
            problems.append(
                f"compare.three_way.{role} is {name!r}, which is not an enabled target other than the reference; "
                "name an enabled target, or null for the first enabled npu (candidate) / gpu (benchmark) target"
            )
    return problems


def corpus_problems(config: dict, base_dir: Path) -> list[str]:
    """The corpus must be readable and its windows must fit every enabled target (an engine start costs minutes)."""
    corpus = config["corpus"]
    if not corpus["enabled"]:
        return []
    problems = []
    try:
        read_corpus_text(corpus_path(config, base_dir))
    except PortcheckError as exc:
        problems.append(str(exc))
    length = corpus["window_length"]
    if corpus["score_from"] >= length:
        problems.append(f"corpus.score_from {corpus['score_from']} leaves nothing to score in windows of {length} "
                        f"tokens; use a value below window_length (llama.cpp: {length // 2})")
    for name, target in config["targets"].items():
        limit = target["max_model_len"]
        if target["enabled"] and limit and length + 1 > limit:
            problems.append(
                f"corpus windows of {length} tokens do not fit target {name}: scoring needs {length + 1} <= "
                f"max_model_len {limit}; set corpus.window_length <= {limit - 1} or raise "
                f"targets.{name}.max_model_len"
            )
    return problems


def enabled_targets(config: dict) -> list[str]:
    """Enabled targets, reference first, each parsed so that a bad name fails here."""
    names = [name for name, t in config["targets"].items() if t["enabled"]]
    for name in names:
        parse_target(name)
    return sorted(names, key=lambda n: (n != config["reference"], n))


def engine_settings(config: dict, target: str) -> EngineSettings:
    values = {k: config["targets"][target][k] for k in ENGINE_SETTING_KEYS}
    return EngineSettings(trust_remote_code=config["model"]["trust_remote_code"], **values)
