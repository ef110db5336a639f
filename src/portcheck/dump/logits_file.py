"""The logit dump format: one safetensors file per target, tensors per prompt plus string metadata.

Safetensors (never pickle) so a dump from another machine can be opened without running its code. Written as a
stream (DumpWriter): each prompt's tensors go to disk as they come, so memory does not grow with the corpus.
Tensors of prompt i (row t of a prompt = distribution of the token after input_ids[0..t]):
  input_ids.<i>       int64   [T]
  logits.<i>          float32 [T, V]   full dumps
  topk_ids.<i>        int64   [T, k]   top-k dumps (vLLM gives top-k prompt logprobs); int32 in compact dumps
  topk_logprobs.<i>   float32 [T, k]   top-k and compact dumps, by decreasing log-prob in compact dumps
  token_logprobs.<i>  float32 [T]      log-prob of input_ids[t+1] at row t; NaN on the last row
  rest_logmass.<i>    float32 [T]      compact dumps: log of the mass outside the top-k (dump/compact.py)
  sample_logprobs.<i> float32 [T, s]   compact dumps of whole rows: log-probs at sample_ids
  sample_ids          int32   [s]      the shared sample of ids (one per dump)
  greedy_ids.<i>      int64   [N]      greedy continuation, if given
  greedy_logprobs.<i> float32 [N]      if the engine gave them
"""

from __future__ import annotations

import json
import shutil
import struct
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError, safe_open

from portcheck.atomic import atomic_path
from portcheck.dump.compact import Storage, compact_scores, sample_ids
from portcheck.engines.outputs import Generation, PromptScores
from portcheck.errors import PortcheckError
from portcheck.targets import parse_target

FORMAT_NAME = "portcheck-logits"
FORMAT_VERSION = "1"
IDENTITY_KEYS = ("model_sha", "tokenizer_sha", "prompts_sha")
REQUIRED_META = ("target", "device", "engine", "dtype") + IDENTITY_KEYS
RESERVED_META = ("format", "format_version", "kind", "num_prompts", "json_keys")
KINDS = ("full", "topk", "compact")
# Meta key of a dump of no prompt: why nothing was scored (a mode run that could not act skips its workload, and
# what reads its dumps skips with it). Any other dump holds at least one prompt.
SKIPPED = "skipped"

_I64, _I32, _F32 = "I64", "I32", "F32"
_NUMPY_DTYPE = {_I64: np.int64, _I32: np.int32, _F32: np.float32}
# name prefix -> (dtype, rank) of each per-prompt tensor, by dump kind
_SCORE_TENSORS = {
    "full": {"logits": (_F32, 2)},
    "topk": {"topk_ids": (_I64, 2), "topk_logprobs": (_F32, 2), "token_logprobs": (_F32, 1)},
    "compact": {"topk_ids": (_I32, 2), "topk_logprobs": (_F32, 2), "token_logprobs": (_F32, 1),
                "rest_logmass": (_F32, 1)},
}
_SAMPLE = "sample_logprobs"  # compact dumps of whole rows: [T, s] per prompt, with one sample_ids [s]
_GREEDY_TENSORS = {"greedy_ids": (_I64, 1), "greedy_logprobs": (_F32, 1)}
_REDUMP = "delete it and rerun the dump rule"


@dataclass
class Dump:
    """A read dump. Score tensors are read from the file on access, prompt by prompt, so
    full-vocabulary logits of every prompt never need to be in memory at once."""

    path: Path | None
    meta: dict[str, Any]
    kind: str  # "full" | "topk" | "compact"
    input_ids: list[np.ndarray]
    logits: Sequence[np.ndarray] | None = None
    topk_ids: Sequence[np.ndarray] | None = None
    topk_logprobs: Sequence[np.ndarray] | None = None
    token_logprobs: Sequence[np.ndarray] | None = None
    greedy_ids: Sequence[np.ndarray] | None = None
    greedy_logprobs: Sequence[np.ndarray | None] | None = None
    rest_logmass: Sequence[np.ndarray] | None = None
    sample_logprobs: Sequence[np.ndarray] | None = None
    sample_ids: np.ndarray | None = None
    width: int = 0  # V for full dumps, k for top-k and compact dumps

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


def write_dump(path: str | Path, scores: Iterable[PromptScores], greedy: list[Generation] | None,
               meta: dict[str, Any], storage: Storage | None = None, sample: np.ndarray | None = None) -> None:
    """Write a dump atomically: the file exists complete or not at all. storage: compact records for whole rows;
    sample: the sample ids of compact records an engine made itself (vLLM's worker)."""
    writer = DumpWriter(path, storage)
    writer.sample = sample
    for prompt_scores in scores:
        writer.add(prompt_scores)
    writer.close(meta, greedy)


class DumpWriter:
    """A dump written prompt by prompt: tensors go to an anonymous data file as they are added (whole rows reduced
    to compact records first when storage says so); close() validates the layout and writes the safetensors file
    (header, then the data copied over) atomically. Nothing is written if close() is never reached."""

    def __init__(self, path: str | Path, storage: Storage | None = None):
        self.path = Path(path)
        self.storage = storage or Storage()
        self.kind: str | None = None
        self.count = 0
        self.sample: np.ndarray | None = None
        self.fallback_reason = ""  # why the engine's worker could not make the rows (vLLM's log-probs were stored)
        self.meta: dict[str, Any] = {}  # what the rows hold (dump.run.rows_meta), added to close()'s metadata
        self.layout: dict[str, tuple[tuple[int, ...], str]] = {}
        self._entries: dict[str, dict[str, Any]] = {}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._data = tempfile.TemporaryFile(dir=self.path.parent)

    def add(self, scores: PromptScores) -> None:
        if self.storage.compact and self.storage.sample and scores.logits is not None and self.sample is None:
            self.sample = sample_ids(scores.logits.shape[1], self.storage.sample)
        stored = compact_scores(scores, self.storage, self.sample)
        kind = _kind_of([stored])
        if self.kind not in (None, kind):
            raise PortcheckError(f"{self.path}: prompt {self.count} has {kind} scores, the prompts before it "
                                 f"{self.kind}")
        self.kind = kind
        for name, array in _prompt_tensors(stored, self.count, kind).items():
            self._put(name, array)
        self.count += 1

    def close(self, meta: dict[str, Any], greedy: list[Generation] | None = None) -> None:
        try:
            if self.kind is None:
                if not meta.get(SKIPPED):
                    raise PortcheckError("no prompt scores to write: the prompt set is empty")
                self.kind = "full"  # no rows, so no kind of rows: the format's plainest
            if greedy:
                if len(greedy) != self.count:
                    raise PortcheckError(f"{self.path}: {len(greedy)} greedy continuations for {self.count} prompts")
                for name, array in _greedy_tensors(greedy).items():
                    self._put(name, array)
            if self.sample is not None:
                self._put("sample_ids", _as(self.sample, _I32))
            _check_layout(self.path, self.kind, self.count, self.layout, meta.get(SKIPPED))
            meta = {**meta, **self.meta}
            if self.fallback_reason:
                meta["rows_fallback"] = self.fallback_reason
                if self.storage.compact:  # the key's earlier name, where compact records were asked for
                    meta["compact_fallback"] = self.fallback_reason
            self._write(_encode_meta(self.path, meta, self.kind, self.count))
        finally:
            self._data.close()

    def _put(self, name: str, array: np.ndarray) -> None:
        begin = self._data.tell()
        self._data.write(np.ascontiguousarray(array).tobytes())
        code = _dtype_code(array)
        self.layout[name] = (tuple(array.shape), code)
        self._entries[name] = {"dtype": code, "shape": list(array.shape), "data_offsets": [begin, self._data.tell()]}

    def _write(self, metadata: dict[str, str]) -> None:
        header = json.dumps({"__metadata__": metadata, **self._entries}, separators=(",", ":")).encode()
        header += b" " * (-len(header) % 8)  # safetensors aligns the data to 8 bytes
        self._data.seek(0)
        with atomic_path(self.path) as tmp, open(tmp, "wb") as out:
            out.write(struct.pack("<Q", len(header)))
            out.write(header)
            shutil.copyfileobj(self._data, out, 1 << 20)


def _kind_of(scores: list[PromptScores]) -> str:
    if not scores:
        raise PortcheckError("no prompt scores to write: the prompt set is empty")
    if all(s.logits is not None for s in scores):
        return "full"
    if all(s.topk_ids is not None and s.topk_logprobs is not None and s.token_logprobs is not None for s in scores):
        return "compact" if all(s.rest_logmass is not None for s in scores) else "topk"
    raise PortcheckError(
        "every prompt needs either full logits, or topk_ids + topk_logprobs + token_logprobs, "
        "and all prompts of a dump the same kind"
    )


def _prompt_tensors(s: PromptScores, i: int, kind: str) -> dict[str, np.ndarray]:
    tensors = {f"input_ids.{i}": _as(s.input_ids, _I64)}
    for prefix, (code, _rank) in _SCORE_TENSORS[kind].items():
        tensors[f"{prefix}.{i}"] = _as(getattr(s, prefix), code)
    if kind == "compact" and s.sample_logprobs is not None:
        tensors[f"{_SAMPLE}.{i}"] = _as(s.sample_logprobs, _F32)
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
    return {np.dtype(np.int64): _I64, np.dtype(np.int32): _I32, np.dtype(np.float32): _F32}[array.dtype]


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
    width = _check_layout(path, kind, n, layout, meta.get(SKIPPED))
    with safe_open(path, framework="np") as f:
        input_ids = [f.get_tensor(f"input_ids.{i}") for i in range(n)]
    lazy = {
        prefix: _LazyTensors(path, [f"{prefix}.{i}" for i in range(n)]) for prefix in _SCORE_TENSORS[kind]
    }
    if "greedy_ids.0" in layout:
        lazy["greedy_ids"] = _LazyTensors(path, [f"greedy_ids.{i}" for i in range(n)])
        names = [f"greedy_logprobs.{i}" if f"greedy_logprobs.{i}" in layout else None for i in range(n)]
        lazy["greedy_logprobs"] = _LazyTensors(path, names)
    sample = None
    if "sample_ids" in layout:
        lazy[_SAMPLE] = _LazyTensors(path, [f"{_SAMPLE}.{i}" for i in range(n)])
        with safe_open(path, framework="np") as f:
            sample = f.get_tensor("sample_ids").astype(np.int64)
    return Dump(path=path, meta=meta, kind=kind, input_ids=input_ids, width=width, sample_ids=sample, **lazy)


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


def _check_layout(path: Path, kind: str, num_prompts: int, layout: dict, skipped: str | None = None) -> int:
    """Check every tensor's presence, dtype and shape; return V (full) or k (top-k), 0 for a skipped dump."""
    if skipped or not num_prompts:
        if not (skipped and num_prompts == 0 and not layout):
            raise PortcheckError(f"{path}: {num_prompts} prompts and {len(layout)} tensors in a dump that says "
                                 f"{'it was skipped' if skipped else 'nothing of why it holds none'}; {_REDUMP}")
        return 0
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
    if "sample_ids" in layout:
        _check_sample(path, layout, num_prompts)
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


def _check_sample(path: Path, layout: dict, num_prompts: int) -> None:
    (count,) = _expect(path, layout, "sample_ids", _I32, 1)
    for i in range(num_prompts):
        rows, width = _expect(path, layout, f"{_SAMPLE}.{i}", _F32, 2)
        if width != count or rows != layout[f"input_ids.{i}"][0][0]:
            raise PortcheckError(f"{path}: {_SAMPLE}.{i} has shape {[rows, width]}, expected "
                                 f"[{layout[f'input_ids.{i}'][0][0]}, {count}]; {_REDUMP}")


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
