"""Long-context windows: a text's tokens cut into windows that cross many Gated DeltaNet chunks (64 tokens each),
spread evenly over the text so that every part of it (the shipped corpus ends in Chinese) is scored."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from portcheck.errors import PortcheckError
from portcheck.hashing import sha256_text


def window_starts(n_tokens: int, window_length: int, windows: int) -> list[int]:
    """Start offsets of `windows` non-overlapping windows spread evenly over n_tokens (first at 0, last at the end)."""
    needed = window_length * windows
    if n_tokens < needed:
        raise PortcheckError(
            f"the corpus has {n_tokens} tokens; {windows} windows of {window_length} need {needed}; give a longer "
            f"corpus.file, or lower corpus.windows / corpus.window_length"
        )
    if windows == 1:
        return [0]
    return [k * (n_tokens - window_length) // (windows - 1) for k in range(windows)]


def cut_windows(token_ids: Sequence[int], window_length: int, windows: int) -> list[list[int]]:
    return [list(token_ids[s : s + window_length]) for s in window_starts(len(token_ids), window_length, windows)]


def corpus_job(path: str | Path, corpus: dict, text: str) -> dict:
    """What an engine session needs to score the corpus windows: the text, its file name and sha256 (the dump's
    identity) and the window settings of the config's `corpus`."""
    return {"text": text, "path": Path(path).name, "sha256": sha256_text(text),
            "window_length": corpus["window_length"], "windows": corpus["windows"]}
