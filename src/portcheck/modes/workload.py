"""The decode workload every mode is judged on (vLLM does not read the prefix cache for requests with prompt
log-probs, so modes act on the decode path and on generated-token log-probs): the first modes.prompts prompts,
each after the same shared prefix cut from the corpus text (modes.prefix_tokens: several 64-token Gated DeltaNet
chunks, so a prefix cache has whole blocks to hit and a chunked prefill has chunks to cross), decoded greedily for
modes.max_tokens steps. The base run of a target decodes the same workload in its dump's engine start."""

from __future__ import annotations

from portcheck.engines.base import check_prompt_lengths
from portcheck.errors import PortcheckError


def mode_workload(tokenizer, corpus_text: str, prompt_ids: list[list[int]], modes: dict,
                  max_model_len: int | None) -> list[list[int]]:
    """The workload's token ids, refused before the engine starts when prompt + steps do not fit max_model_len."""
    corpus_ids = list(tokenizer(corpus_text)["input_ids"])
    length = int(modes["prefix_tokens"])
    if len(corpus_ids) < length:
        raise PortcheckError(f"modes.prefix_tokens is {length} but the corpus text has {len(corpus_ids)} tokens; "
                             "lower modes.prefix_tokens or give a longer corpus.file")
    prefix = list(map(int, corpus_ids[:length]))
    workload = [prefix + list(map(int, ids)) for ids in prompt_ids[: int(modes["prompts"])]]
    check_prompt_lengths(workload, max_model_len, [f"mode workload prompt {i}" for i in range(len(workload))],
                         new_tokens=int(modes["max_tokens"]))
    return workload


def batch_workload(tokenizer, corpus_text: str, prompt_ids: list[list[int]], modes: dict,
                   max_model_len: int | None) -> list[list[int]]:
    """The batch mode's batch: the workload, then the other prompts (cycled) after the same prefix, up to
    modes.batch_size sequences; its first sequences are the workload's."""
    size = max(int(modes["batch_size"]), int(modes["prompts"]))
    cycled = [prompt_ids[i % len(prompt_ids)] for i in range(size)]
    return mode_workload(tokenizer, corpus_text, cycled, {**modes, "prompts": size}, max_model_len)
