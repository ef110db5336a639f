"""The benchmark workload: fixed-length prompts of random token ids, as vLLM's benchmark tools build them."""

from __future__ import annotations

import numpy as np


def random_prompts(tokenizer, count: int, length: int, seed: int) -> list[list[int]]:
    """`count` prompts of exactly `length` random token ids (special tokens excluded), reproducible from seed,
    as vLLM's benchmark tools build fixed-length prompts."""
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    vocab = [i for i in range(len(tokenizer)) if i not in special]
    if not vocab:
        raise ValueError("the tokenizer has no ordinary tokens to build benchmark prompts from")
    rng = np.random.default_rng(seed)
    return [[int(vocab[j]) for j in rng.integers(0, len(vocab), size=length)] for _ in range(count)]
