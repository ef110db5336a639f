"""Facts about a checkpoint directory read from its files alone (safetensors headers, config.json):
no weights are loaded, so the manifest costs seconds even for a real model."""

from __future__ import annotations

import json
import math
import struct
from collections import Counter
from pathlib import Path
from typing import Any

from portcheck.errors import PortcheckError
from portcheck.hashing import sha256_file, sha256_text

DTYPE_BYTES = {"F64": 8, "F32": 4, "BF16": 2, "F16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
               "F8_E4M3": 1, "F8_E5M2": 1}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt")


REFETCH = "download or copy it again from the source checkpoint"


def read_safetensors_header(path: Path) -> dict[str, dict]:
    """Tensor name -> {dtype, shape, data_offsets}, from the file's JSON header (8-byte little-endian length, then
    JSON), each tensor's byte range checked against the file's size: a file cut short is refused here, before any
    engine loads it."""
    with open(path, "rb") as handle:
        raw = handle.read(8)
        if len(raw) < 8:
            raise PortcheckError(f"{path} is truncated or not a safetensors file; {REFETCH}")
        (length,) = struct.unpack("<Q", raw)
        header = handle.read(min(length, MAX_HEADER_BYTES))
    if len(header) != length:
        raise PortcheckError(f"{path} is truncated or not a safetensors file; {REFETCH}")
    try:
        tensors = json.loads(header)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PortcheckError(f"{path} has a header that is not JSON ({exc}): not a safetensors file; {REFETCH}") from exc
    if not isinstance(tensors, dict):
        raise PortcheckError(f"{path} has a header that is not a JSON object: not a safetensors file; {REFETCH}")
    tensors.pop("__metadata__", None)
    check_byte_ranges(path, tensors, path.stat().st_size - 8 - length)
    return tensors


# safetensors' own limit on a header (100 MB): a larger length is a corrupt file, not one to read into memory.
MAX_HEADER_BYTES = 100_000_000


def check_byte_ranges(path: Path, tensors: dict[str, dict], data_bytes: int) -> None:
    """Every tensor's data_offsets inside the file's data section and as long as its dtype and shape need."""
    for name, info in tensors.items():
        try:
            begin, end = (int(x) for x in info["data_offsets"])
            count = math.prod(int(n) for n in info["shape"])
        except (KeyError, TypeError, ValueError) as exc:
            raise PortcheckError(f"{path}: tensor {name} has no valid dtype, shape and data_offsets; {REFETCH}") from exc
        if end > data_bytes:
            raise PortcheckError(
                f"{path} is cut short: tensor {name} needs bytes {begin}-{end} of the data section, the file holds "
                f"{data_bytes} ({end - data_bytes:,} bytes missing); {REFETCH} and compare its size with the source's"
            )
        width = DTYPE_BYTES.get(info.get("dtype"))
        if begin < 0 or begin > end or (width is not None and end - begin != count * width):
            raise PortcheckError(
                f"{path}: tensor {name} ({info.get('dtype')} {info['shape']}) spans bytes {begin}-{end}, which does "
                f"not fit its shape; the file is corrupt: {REFETCH}"
            )


def tensor_part(name: str) -> str:
    """Which part of the model a checkpoint tensor belongs to: vision tower, MTP head, or text."""
    if name.startswith("mtp.") or ".mtp." in name:
        return "mtp"
    if "visual." in name or name.startswith("vision"):
        return "vision"
    return "text"


def weight_files(model_dir: Path) -> list[Path]:
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise PortcheckError(f"{model_dir} has no *.safetensors weights; check the model source or path")
    return files


def checkpoint_facts(model_dir: str | Path) -> dict[str, Any]:
    params, tensors, dtypes = Counter(), Counter(), Counter()
    dtype_bytes = Counter()
    for file in weight_files(Path(model_dir)):
        for name, info in read_safetensors_header(file).items():
            count = math.prod(info["shape"])
            part = tensor_part(name)
            params[part] += count
            tensors[part] += 1
            dtypes[info["dtype"]] += 1
            dtype_bytes[info["dtype"]] += count * DTYPE_BYTES.get(info["dtype"], 0)
    return {
        "tensor_count": sum(tensors.values()),
        "text_tensors": tensors["text"],
        "vision_tensors": tensors["vision"],
        "mtp_tensors": tensors["mtp"],
        "parameters": {"text": params["text"], "vision": params["vision"], "mtp": params["mtp"],
                       "total": sum(params.values())},
        "dtypes": {d: {"tensors": dtypes[d], "bytes": dtype_bytes[d]} for d in sorted(dtypes)},
    }


def load_model_config(model_dir: str | Path) -> dict:
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise PortcheckError(f"{model_dir} has no config.json; point the model source at a checkpoint folder")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise PortcheckError(f"{path} is not valid JSON (line {exc.lineno} column {exc.colno}: {exc.msg}); "
                             f"restore it from the source checkpoint") from exc
    except UnicodeDecodeError as exc:
        raise PortcheckError(f"{path} is not UTF-8 text; restore it from the source checkpoint") from exc
    if not isinstance(config, dict):
        raise PortcheckError(f"{path} holds a JSON {type(config).__name__}, not an object; restore it from the "
                             "source checkpoint")
    return config


def text_settings(config: dict) -> dict[str, Any]:
    """config.json's settings of the language model: a multimodal checkpoint keeps them under text_config."""
    return {**config, **(config.get("text_config") or {})}


def config_summary(config: dict) -> dict[str, Any]:
    """The seed report's model table, from config.json (text settings may sit under text_config)."""
    text = text_settings(config)
    layer_types = list(text.get("layer_types") or [])
    return {
        "architectures": config.get("architectures"),
        "model_type": config.get("model_type"),
        "hidden_size": text.get("hidden_size"),
        "num_hidden_layers": text.get("num_hidden_layers"),
        "num_attention_heads": text.get("num_attention_heads"),
        "num_key_value_heads": text.get("num_key_value_heads"),
        "head_dim": text.get("head_dim"),
        "intermediate_size": text.get("intermediate_size"),
        "vocab_size": text.get("vocab_size"),
        "eos_token_id": text.get("eos_token_id"),
        "linear_num_key_heads": text.get("linear_num_key_heads"),
        "linear_num_value_heads": text.get("linear_num_value_heads"),
        "linear_key_head_dim": text.get("linear_key_head_dim"),
        "linear_value_head_dim": text.get("linear_value_head_dim"),
        "layer_type_counts": dict(Counter(layer_types)),
        "full_attention_layers": [i for i, t in enumerate(layer_types) if t == "full_attention"],
        "max_position_embeddings": text.get("max_position_embeddings"),
        "tie_word_embeddings": config.get("tie_word_embeddings", text.get("tie_word_embeddings")),
        "mtp_num_hidden_layers": text.get("mtp_num_hidden_layers"),
        "mamba_ssm_dtype": text.get("mamba_ssm_dtype"),
        "vision_tower": "vision_config" in config,
    }


def model_sha(model_dir: str | Path) -> str:
    """One hash for the weights and config, so dumps from different checkpoints are never compared."""
    model_dir = Path(model_dir)
    parts = [f"{f.name}:{sha256_file(f)}" for f in [*weight_files(model_dir), model_dir / "config.json"]]
    return sha256_text("\n".join(parts))


def tokenizer_sha(model_dir: str | Path) -> str:
    model_dir = Path(model_dir)
    parts = [f"{name}:{sha256_file(model_dir / name)}" for name in TOKENIZER_FILES if (model_dir / name).is_file()]
    if not parts:
        raise PortcheckError(f"{model_dir} has no tokenizer files ({', '.join(TOKENIZER_FILES)}); {TOKENIZER_FIX}")
    return sha256_text("\n".join(parts))


def checkpoint_files(model_dir: Path) -> list[Path]:
    """Every file of the checkpoint; hidden entries are download bookkeeping (e.g. huggingface_hub's .cache/)."""
    return sorted(
        p for p in model_dir.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(model_dir).parts)
    )


def tokenizer_facts(model_dir: Path, texts: list[str], vocab_size: int | None,
                    trust_remote_code: bool = False) -> dict[str, Any]:
    """Load the tokenizer as the engines do and check it: a real vocabulary (transformers quietly builds a
    one-token tokenizer when the files are missing), and every id it gives the prompts and corpus inside the
    model's vocabulary (else the engine fails on an index out of range)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=trust_remote_code)
    except Exception as exc:  # noqa: BLE001 - every loader failure gets the same advice
        raise PortcheckError(f"the tokenizer in {model_dir} does not load ({type(exc).__name__}: "
                             f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}); {TOKENIZER_FIX}") from exc
    if len(tokenizer) <= MIN_VOCABULARY:
        raise PortcheckError(f"the tokenizer in {model_dir} has {len(tokenizer)} token(s): its files do not define a "
                             f"vocabulary; {TOKENIZER_FIX}")
    ids = [token for text in texts for token in tokenizer(text)["input_ids"]]
    largest = max(ids, default=-1)
    if vocab_size and largest >= vocab_size:
        raise PortcheckError(
            f"the tokenizer in {model_dir} gives id {largest} on the prompts or corpus, but config.json's "
            f"vocab_size is {vocab_size}: the tokenizer belongs to another model; {TOKENIZER_FIX}"
        )
    return {"class": type(tokenizer).__name__, "size": len(tokenizer), "max_id": largest, "tokens": len(ids)}


def check_shard_index(model_dir: Path) -> None:
    """A sharded checkpoint's index (model.safetensors.index.json) names only shards that are there, each holding
    the tensors the index puts in it (a shard missing from a copy fails an engine after minutes of loading)."""
    for index in sorted(model_dir.glob("*.safetensors.index.json")):
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (ValueError, KeyError, TypeError) as exc:
            raise PortcheckError(f"{index} is not a safetensors index (JSON with a weight_map); {REFETCH}") from exc
        for shard in sorted(set(weight_map.values())):
            if not (model_dir / shard).is_file():
                raise PortcheckError(f"{index} names shard {shard}, which is not in {model_dir}; {REFETCH}")
            missing = {name for name, file in weight_map.items() if file == shard} - set(
                read_safetensors_header(model_dir / shard))
            if missing:
                raise PortcheckError(f"{model_dir / shard} lacks {len(missing)} tensor(s) its index puts there "
                                     f"(e.g. {sorted(missing)[0]}); {REFETCH}")


MIN_VOCABULARY = 1
TOKENIZER_FIX = f"copy the checkpoint's own tokenizer files ({', '.join(TOKENIZER_FILES)}) from its source"


def check_checkpoint(model_dir: str | Path, texts: list[str], trust_remote_code: bool = False) -> dict[str, Any]:
    """What an engine needs of a checkpoint, checked without loading weights: config.json parses, every tensor's
    bytes lie inside its safetensors file, the tokenizer has a vocabulary and its ids on `texts` fit the model's.
    {config, facts, tokenizer}; PortcheckError naming the file and the fix otherwise."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise PortcheckError(f"model directory {model_dir} does not exist or is not a directory; give the folder "
                             "that holds the checkpoint (config.json, *.safetensors, tokenizer files)")
    config = load_model_config(model_dir)
    facts = checkpoint_facts(model_dir)
    check_shard_index(model_dir)
    tokenizer_sha(model_dir)  # refuses a checkpoint without tokenizer files
    tokenizer = tokenizer_facts(model_dir, texts, text_settings(config).get("vocab_size"), trust_remote_code)
    return {"config": config, "facts": facts, "tokenizer": tokenizer}


def build_manifest(model_dir: str | Path, source: dict, texts: list[str] | None = None,
                   trust_remote_code: bool = False) -> dict[str, Any]:
    """The checkpoint's files, hashes and facts, once check_checkpoint accepts it."""
    model_dir = Path(model_dir)
    checked = check_checkpoint(model_dir, texts or [], trust_remote_code)
    files = checkpoint_files(model_dir)
    return {
        "source": source,
        "files": [{"path": str(p.relative_to(model_dir)), "bytes": p.stat().st_size, "sha256": sha256_file(p)}
                  for p in files],
        "total_bytes": sum(p.stat().st_size for p in files),
        "model_sha": model_sha(model_dir),
        "tokenizer_sha": tokenizer_sha(model_dir),
        **checked["facts"],
        "config": config_summary(checked["config"]),
        "tokenizer": checked["tokenizer"],
    }


def checkpoint_fingerprint(model_dir: str | Path, cache_path: str | Path) -> str:
    """One sha256 over every checkpoint file's name, size and sha256, so that a checkpoint overwritten in place
    (same names, a directory mtime that does not move) still reads as another. Each file's sha256 is kept in
    `cache_path` while its size, mtime and inode stay the same: a no-op run costs one stat per file."""
    from portcheck.atomic import write_json

    model_dir, cache_path = Path(model_dir), Path(cache_path)
    try:
        cache = json.loads(cache_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        cache = {}
    entries = {}
    for file in checkpoint_files(model_dir):
        stat = file.stat()
        key = [stat.st_size, stat.st_mtime_ns, stat.st_ino]
        name = str(file.relative_to(model_dir))
        cached = cache.get(name)
        sha = cached["sha256"] if cached and cached.get("key") == key else sha256_file(file)
        entries[name] = {"key": key, "sha256": sha}
    if entries != cache:
        write_json(cache_path, entries)
    return sha256_text("\n".join(f"{name}:{e['key'][0]}:{e['sha256']}" for name, e in sorted(entries.items())))


def local_model_problems(path: str | None, base_dir: Path = Path(".")) -> list[str]:
    if not path:
        return ["model.source is local but model.path is not set; set it to the model directory"]
    model_dir = (base_dir / path) if not Path(path).is_absolute() else Path(path)
    if not model_dir.is_dir():
        return [f"model directory {model_dir} does not exist; fix model.path or use source: hf / modelscope"]
    problems = []
    if not (model_dir / "config.json").is_file():
        problems.append(f"model directory {model_dir} has no config.json; point model.path at the checkpoint folder")
    else:
        try:
            load_model_config(model_dir)
        except PortcheckError as exc:
            problems.append(str(exc))
    if not list(model_dir.glob("*.safetensors")):
        problems.append(
            f"model directory {model_dir} has no *.safetensors weights (portcheck never loads pickled .bin files); "
            "download the safetensors checkpoint"
        )
    return problems

