"""Model acquisition: build the tiny model, or download from the Hugging Face Hub or ModelScope.
Everything lands in a temporary directory that is renamed into place only when complete, so an
interrupted or failed download never leaves a directory later rules would take as a model."""

from __future__ import annotations

import os
from pathlib import Path

from portcheck.atomic import atomic_dir
from portcheck.errors import PortcheckError
from portcheck.model.checkpoint import local_model_problems

# Only what inference needs: safetensors weights (never pickled .bin), configs and tokenizer files.
ALLOW_PATTERNS = ["*.safetensors", "*.safetensors.index.json", "*.json", "*.txt", "*.model", "*.jinja"]


def fetch_model(source: str, dest: str | Path, repo_id: str = "", revision: str = "main", seed: int = 0) -> Path:
    """Create `dest` from `source` (tiny | hf | modelscope) atomically and check it holds a checkpoint."""
    dest = Path(dest)
    fetchers = {"tiny": _build_tiny, "tiny-qwen3": _build_tiny_dense, "hf": _download_hf,
                "modelscope": _download_modelscope}
    if source not in fetchers:
        raise PortcheckError(f"model source {source!r} cannot be fetched; use one of {sorted(fetchers)} (local "
                             "needs no fetch)")
    with atomic_dir(dest) as tmp:
        fetchers[source](tmp, repo_id=repo_id, revision=revision, seed=seed)
        problems = local_model_problems(str(tmp))
        if problems:
            raise PortcheckError(f"{source} model {repo_id or ''}: " + "; ".join(problems))
    return dest


def _build_tiny(tmp: Path, seed: int, **_) -> None:
    from portcheck.model.tiny import build_tiny_model

    build_tiny_model(tmp, seed=seed)


def _build_tiny_dense(tmp: Path, seed: int, **_) -> None:
    from portcheck.model.tiny import build_tiny_model

    build_tiny_model(tmp, seed=seed, architecture="qwen3")


def _download_hf(tmp: Path, repo_id: str, revision: str, **_) -> None:
    from huggingface_hub import snapshot_download

    # The token comes from the environment (HF_TOKEN) only; huggingface_hub reads it itself and it is never logged.
    try:
        # HF_ENDPOINT is read at call time (huggingface_hub reads it once at import): mirrors work per run.
        snapshot_download(repo_id=repo_id, revision=revision, local_dir=tmp, allow_patterns=ALLOW_PATTERNS,
                          endpoint=os.environ.get("HF_ENDPOINT") or None)
    except Exception as exc:  # noqa: BLE001 - every hub failure gets the same advice
        raise PortcheckError(
            f"could not download {repo_id}@{revision} from the Hugging Face Hub "
            f"({type(exc).__name__}: {_first_line(exc)}); check the network, HF_ENDPOINT and HF_TOKEN, "
            "or download the checkpoint elsewhere and set model.source: local with model.path"
        ) from exc


def _download_modelscope(tmp: Path, repo_id: str, revision: str, **_) -> None:
    try:
        from modelscope.hub.snapshot_download import snapshot_download
    except ImportError as exc:
        raise PortcheckError("model.source is modelscope but the modelscope package is missing; pip install modelscope") from exc
    try:
        snapshot_download(repo_id, revision=None if revision == "main" else revision, local_dir=str(tmp),
                          allow_patterns=ALLOW_PATTERNS)
    except Exception as exc:  # noqa: BLE001
        raise PortcheckError(
            f"could not download {repo_id}@{revision} from ModelScope ({type(exc).__name__}: {_first_line(exc)}); "
            "check the network and MODELSCOPE_ENDPOINT, or download elsewhere and use model.source: local"
        ) from exc


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return _redact(text[0] if text else "")


def _redact(text: str) -> str:
    """Tokens never reach a log: scrub any the environment holds from messages we pass on."""
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "MODELSCOPE_API_TOKEN"):
        token = os.environ.get(name)
        if token:
            text = text.replace(token, "***")
    return text
