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


def read_safetensors_header(path: Path) -> dict[str, dict]:
    """Tensor name -> {dtype, shape}, from the file's JSON header (8-byte little-endian length, then JSON)."""
    with open(path, "rb") as handle:
        raw = handle.read(8)
        if len(raw) < 8:
            raise PortcheckError(f"{path} is truncated or not a safetensors file; download it again")
        (length,) = struct.unpack("<Q", raw)
        header = handle.read(length)
    if len(header) != length:
        raise PortcheckError(f"{path} is truncated or not a safetensors file; download it again")
    tensors = json.loads(header)
    tensors.pop("__metadata__", None)
    return tensors


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
    return json.loads(path.read_text(encoding="utf-8"))


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
        raise PortcheckError(f"{model_dir} has no tokenizer files ({', '.join(TOKENIZER_FILES)})")
    return sha256_text("\n".join(parts))


def build_manifest(model_dir: str | Path, source: dict) -> dict[str, Any]:
    model_dir = Path(model_dir)
    # Hidden entries are download bookkeeping (e.g. huggingface_hub's .cache/), not part of the checkpoint.
    files = sorted(
        p for p in model_dir.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(model_dir).parts)
    )
    return {
        "source": source,
        "files": [{"path": str(p.relative_to(model_dir)), "bytes": p.stat().st_size, "sha256": sha256_file(p)}
                  for p in files],
        "total_bytes": sum(p.stat().st_size for p in files),
        "model_sha": model_sha(model_dir),
        "tokenizer_sha": tokenizer_sha(model_dir),
        **checkpoint_facts(model_dir),
        "config": config_summary(load_model_config(model_dir)),
    }


def local_model_problems(path: str | None, base_dir: Path = Path(".")) -> list[str]:
    if not path:
        return ["model.source is local but model.path is not set; set it to the model directory"]
    model_dir = (base_dir / path) if not Path(path).is_absolute() else Path(path)
    if not model_dir.is_dir():
        return [f"model directory {model_dir} does not exist; fix model.path or use source: hf / modelscope"]
    problems = []
    if not (model_dir / "config.json").is_file():
        problems.append(f"model directory {model_dir} has no config.json; point model.path at the checkpoint folder")
    if not list(model_dir.glob("*.safetensors")):
        problems.append(
            f"model directory {model_dir} has no *.safetensors weights (portcheck never loads pickled .bin files); "
            "download the safetensors checkpoint"
        )
    return problems
