"""The logit dump format: one safetensors file per target, tensors per prompt plus string metadata.

Safetensors (never pickle) so a dump from another machine can be opened without running its code.
Tensors of prompt i (row t of a prompt = distribution of the token after input_ids[0..t]):
  input_ids.<i>       int64   [T]
  logits.<i>          float32 [T, V]   full dumps
  topk_ids.<i>        int64   [T, k]   top-k dumps (vLLM gives top-k prompt logprobs)
  topk_logprobs.<i>   float32 [T, k]
  token_logprobs.<i>  float32 [T]      log-prob of input_ids[t+1] at row t; NaN on the last row
  greedy_ids.<i>      int64   [N]      greedy continuation, if given
  greedy_logprobs.<i> float32 [N]      if the engine gave them
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from portcheck.atomic import atomic_path
from portcheck.engines.outputs import Generation, PromptScores
from portcheck.errors import PortcheckError
from portcheck.targets import parse_target

FORMAT_NAME = "portcheck-logits"
FORMAT_VERSION = "1"
IDENTITY_KEYS = ("model_sha", "tokenizer_sha", "prompts_sha")
REQUIRED_META = ("target", "device", "engine", "dtype") + IDENTITY_KEYS
RESERVED_META = ("format", "format_version", "kind", "num_prompts", "json_keys")
KINDS = ("full", "topk")

_I64, _F32 = "I64", "F32"
_NUMPY_DTYPE = {_I64: np.int64, _F32: np.float32}
# name prefix -> (dtype, rank) of each per-prompt tensor, by dump kind
_SCORE_TENSORS = {
    "full": {"logits": (_F32, 2)},
    "topk": {"topk_ids": (_I64, 2), "topk_logprobs": (_F32, 2), "token_logprobs": (_F32, 1)},
}
_GREEDY_TENSORS = {"greedy_ids": (_I64, 1), "greedy_logprobs": (_F32, 1)}
_REDUMP = "delete it and rerun the dump rule"


@dataclass
class Dump:
    """A read dump. Score tensors are read from the file on access, prompt by prompt, so
    full-vocabulary logits of every prompt never need to be in memory at once."""

    path: Path | None
    meta: dict[str, Any]
    kind: str  # "full" | "topk"
    input_ids: list[np.ndarray]
    logits: Sequence[np.ndarray] | None = None
    topk_ids: Sequence[np.ndarray] | None = None
    topk_logprobs: Sequence[np.ndarray] | None = None
    token_logprobs: Sequence[np.ndarray] | None = None
    greedy_ids: Sequence[np.ndarray] | None = None
    greedy_logprobs: Sequence[np.ndarray | None] | None = None
    width: int = 0  # V for full dumps, k for top-k dumps

    @property
    def name(self) -> str:
        return str(self.meta.get("target", self.path))

    @property
    def num_prompts(self) -> int:
        return len(self.input_ids)


class _LazyTensors(Sequence):
    """Per-prompt tensors of one kind, read from the file when indexed (None where a name is absent)."""

    def __init__(self, path: Path, names: list[str | None]):
        self.path = path
        self.names = names

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(len(self))[index]]
        name = self.names[index]
        if name is None:
            return None
        with safe_open(self.path, framework="np") as f:
            return f.get_tensor(name)


# ---------------------------------------------------------------- writing


def write_dump(
    path: str | Path, scores: list[PromptScores], greedy: list[Generation] | None, meta: dict[str, Any]
) -> None:
    """Write a dump atomically: the file exists complete or not at all."""
    kind = _kind_of(scores)
    tensors = _score_tensors(scores, kind)
    if greedy:
        if len(greedy) != len(scores):
            raise PortcheckError(f"{path}: {len(greedy)} greedy continuations for {len(scores)} prompts")
        tensors.update(_greedy_tensors(greedy))
    layout = {name: (tuple(a.shape), _dtype_code(a)) for name, a in tensors.items()}
    _check_layout(Path(path), kind, len(scores), layout)
    header = _encode_meta(path, meta, kind, len(scores))
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=header)


def _kind_of(scores: list[PromptScores]) -> str:
    if not scores:
        raise PortcheckError("no prompt scores to write: the prompt set is empty")
    if all(s.logits is not None for s in scores):
        return "full"
    if all(s.topk_ids is not None and s.topk_logprobs is not None and s.token_logprobs is not None for s in scores):
        return "topk"
    raise PortcheckError(
        "every prompt needs either full logits, or topk_ids + topk_logprobs + token_logprobs, "
        "and all prompts of a dump the same kind"
    )


def _score_tensors(scores: list[PromptScores], kind: str) -> dict[str, np.ndarray]:
    tensors = {}
    for i, s in enumerate(scores):
        tensors[f"input_ids.{i}"] = _as(s.input_ids, _I64)
        for prefix, (code, _rank) in _SCORE_TENSORS[kind].items():
            tensors[f"{prefix}.{i}"] = _as(getattr(s, prefix), code)
    return tensors


def _greedy_tensors(greedy: list[Generation]) -> dict[str, np.ndarray]:
    tensors = {}
    for i, g in enumerate(greedy):
        tensors[f"greedy_ids.{i}"] = _as(g.token_ids, _I64)
        if g.logprobs is not None:
            tensors[f"greedy_logprobs.{i}"] = _as(g.logprobs, _F32)
    return tensors


def _as(values, code: str) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(values, dtype=_NUMPY_DTYPE[code]))


def _dtype_code(array: np.ndarray) -> str:
    return {np.dtype(np.int64): _I64, np.dtype(np.float32): _F32}[array.dtype]


def _encode_meta(path, meta: dict[str, Any], kind: str, num_prompts: int) -> dict[str, str]:
    clash = sorted(set(meta) & set(RESERVED_META))
    if clash:
        raise PortcheckError(f"{path}: metadata keys {clash} are set by the dump format itself")
    full = _with_target_parts(meta)
    missing = [k for k in REQUIRED_META if full.get(k) in (None, "")]
    if missing:
        raise PortcheckError(f"{path}: dump metadata lacks {missing}")
    full.update(kind=kind, num_prompts=num_prompts)
    json_keys = sorted(k for k, v in full.items() if not isinstance(v, str))
    header = {k: v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str) for k, v in full.items()}
    header.update(format=FORMAT_NAME, format_version=FORMAT_VERSION, json_keys=json.dumps(json_keys))
    return header


def _with_target_parts(meta: dict[str, Any]) -> dict[str, Any]:
    """device/engine/dtype default to the parts of the target name."""
    full = dict(meta)
    if "target" in full and not all(k in full for k in ("device", "engine", "dtype")):
        target = parse_target(full["target"])
        for key in ("device", "engine", "dtype"):
            full.setdefault(key, getattr(target, key))
    return full


# ---------------------------------------------------------------- reading


def read_dump(path: str | Path) -> Dump:
    path = Path(path)
    header, layout = _read_header(path)
    meta = _decode_meta(path, header)
    kind, n = meta["kind"], meta["num_prompts"]
    width = _check_layout(path, kind, n, layout)
    with safe_open(path, framework="np") as f:
        input_ids = [f.get_tensor(f"input_ids.{i}") for i in range(n)]
    lazy = {
        prefix: _LazyTensors(path, [f"{prefix}.{i}" for i in range(n)]) for prefix in _SCORE_TENSORS[kind]
    }
    if "greedy_ids.0" in layout:
        lazy["greedy_ids"] = _LazyTensors(path, [f"greedy_ids.{i}" for i in range(n)])
        names = [f"greedy_logprobs.{i}" if f"greedy_logprobs.{i}" in layout else None for i in range(n)]
        lazy["greedy_logprobs"] = _LazyTensors(path, names)
    return Dump(path=path, meta=meta, kind=kind, input_ids=input_ids, width=width, **lazy)


def read_dump_meta(path: str | Path) -> dict[str, Any]:
    """A dump's metadata only, checked and decoded as read_dump does, without reading any tensor."""
    path = Path(path)
    header, _ = _read_header(path)
    return _decode_meta(path, header)


def _read_header(path: Path) -> tuple[dict[str, str] | None, dict[str, tuple[tuple[int, ...], str]]]:
    if not path.is_file():
        raise PortcheckError(f"{path} does not exist; run the dump rule for this target first")
    try:
        with safe_open(path, framework="np") as f:
            layout = {}
            for name in f.keys():
                tensor = f.get_slice(name)
                layout[name] = (tuple(tensor.get_shape()), tensor.get_dtype())
            return f.metadata(), layout
    except (SafetensorError, OSError, ValueError) as exc:
        raise PortcheckError(f"{path} is truncated or not a safetensors file ({exc}); {_REDUMP}") from exc


def _decode_meta(path: Path, header: dict[str, str] | None) -> dict[str, Any]:
    header = header or {}
    if header.get("format") != FORMAT_NAME:
        raise PortcheckError(
            f"{path} is a safetensors file but not a portcheck logit dump (metadata format="
            f"{header.get('format')!r}, expected {FORMAT_NAME!r}); give a file written by portcheck's dump rule"
        )
    if header.get("format_version") != FORMAT_VERSION:
        raise PortcheckError(
            f"{path} is dump format version {header.get('format_version')!r}; this portcheck reads version "
            f"{FORMAT_VERSION!r}; {_REDUMP}"
        )
    try:
        json_keys = json.loads(header.get("json_keys", "[]"))
        meta = {k: json.loads(v) if k in json_keys else v for k, v in header.items()}
    except json.JSONDecodeError as exc:
        raise PortcheckError(f"{path}: damaged dump metadata ({exc}); {_REDUMP}") from exc
    missing = [k for k in REQUIRED_META + ("kind", "num_prompts") if k not in meta]
    if missing or meta["kind"] not in KINDS or not isinstance(meta["num_prompts"], int):
        raise PortcheckError(f"{path}: dump metadata lacks {missing} or has a bad kind/num_prompts; {_REDUMP}")
    return meta


# ---------------------------------------------------------------- layout validation (shared by write and read)


def _check_layout(path: Path, kind: str, num_prompts: int, layout: dict) -> int:
    """Check every tensor's presence, dtype and shape; return V (full) or k (top-k)."""
    widths = set()
    has_greedy = "greedy_ids.0" in layout
    for i in range(num_prompts):
        (rows,) = _expect(path, layout, f"input_ids.{i}", _I64, 1)
        if rows == 0:
            raise PortcheckError(f"{path}: prompt {i} has no tokens; {_REDUMP}")
        for prefix, (code, rank) in _SCORE_TENSORS[kind].items():
            shape = _expect(path, layout, f"{prefix}.{i}", code, rank)
            if shape[0] != rows:
                raise PortcheckError(
                    f"{path}: {prefix}.{i} has {shape[0]} rows but prompt {i} has {rows} tokens; {_REDUMP}"
                )
            if rank == 2:
                widths.add(shape[1])
        if has_greedy:
            _check_greedy(path, layout, i)
    if len(widths) != 1:
        raise PortcheckError(f"{path}: score tensors have differing widths {sorted(widths)}; {_REDUMP}")
    return widths.pop()


def _check_greedy(path: Path, layout: dict, i: int) -> None:
    (length,) = _expect(path, layout, f"greedy_ids.{i}", _I64, 1)
    if f"greedy_logprobs.{i}" in layout:
        (n_logprobs,) = _expect(path, layout, f"greedy_logprobs.{i}", _F32, 1)
        if n_logprobs != length:
            raise PortcheckError(
                f"{path}: greedy_logprobs.{i} has {n_logprobs} values for {length} greedy tokens; {_REDUMP}"
            )


def _expect(path: Path, layout: dict, name: str, code: str, rank: int) -> tuple[int, ...]:
    if name not in layout:
        raise PortcheckError(f"{path}: tensor {name!r} is missing; {_REDUMP}")
    shape, dtype = layout[name]
    if dtype != code or len(shape) != rank:
        raise PortcheckError(
            f"{path}: tensor {name!r} is {dtype} with shape {list(shape)}, expected {code} of rank {rank}; {_REDUMP}"
        )
    return shape


# ---------------------------------------------------------------- comparability


def check_comparable(ref: Dump, tgt: Dump) -> None:
    """Refuse to compare dumps of different models, tokenizers or prompts, saying exactly what differs."""
    diffs = [
        f"{key} differs (reference {ref.meta.get(key)!r}, target {tgt.meta.get(key)!r})"
        for key in IDENTITY_KEYS
        if ref.meta.get(key) != tgt.meta.get(key)
    ]
    if ref.num_prompts != tgt.num_prompts:
        diffs.append(f"number of prompts differs (reference {ref.num_prompts}, target {tgt.num_prompts})")
    else:
        diffs += _input_id_diffs(ref, tgt)
    if ref.kind == tgt.kind == "full" and ref.width != tgt.width:
        diffs.append(f"vocabulary width differs (reference {ref.width}, target {tgt.width})")
    if diffs:
        raise PortcheckError(
            f"cannot compare {tgt.name} ({tgt.path}) with reference {ref.name} ({ref.path}): "
            + "; ".join(diffs)
            + ". Dump both with the same model, tokenizer and prompts."
        )


def _input_id_diffs(ref: Dump, tgt: Dump) -> list[str]:
    diffs = []
    for i, (a, b) in enumerate(zip(ref.input_ids, tgt.input_ids)):
        position = first_difference(a, b)
        if position is not None:
            diffs.append(
                f"prompt {i} input_ids differ first at position {position} "
                f"(lengths {len(a)} and {len(b)})"
            )
    return diffs


def first_difference(a: Sequence[int], b: Sequence[int]) -> int | None:
    """Index of the first differing element, the shorter length if one is a prefix of the other, None if equal."""
    a, b = np.asarray(a), np.asarray(b)
    n = min(len(a), len(b))
    unequal = np.flatnonzero(a[:n] != b[:n])
    if unequal.size:
        return int(unequal[0])
    return None if len(a) == len(b) else n
