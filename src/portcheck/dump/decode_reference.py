"""The reference side of the decode-path comparison: the reference's engine scores a target's greedy tokens
teacher-forced (prompt + tokens in one prefill), so each decode step of the target has the reference's distribution
for the same context. Rows are cut to the decode steps and written in the target's decode-dump layout."""

from __future__ import annotations

import time
from pathlib import Path

from portcheck.dump.compact import Storage
from portcheck.dump.logits_file import SKIPPED, Dump, read_dump, write_dump
from portcheck.engines.base import check_prompt_lengths
from portcheck.engines.factory import make_engine
from portcheck.engines.outputs import Generation, PromptScores
from portcheck.engines.settings import EngineSettings
from portcheck.env.versions import stack_versions
from portcheck.errors import PortcheckError
from portcheck.model.checkpoint import load_model_config, model_sha, text_settings, tokenizer_sha
from portcheck.targets import parse_target

ROW_FIELDS = ("logits", "topk_ids", "topk_logprobs", "token_logprobs")


def score_decode(reference: str, model_dir: str | Path, settings: EngineSettings, decode_path: str | Path,
                 out_path: str | Path, storage: dict | None = None) -> None:
    """storage: the config's `logits` storage keys (dump/compact.py), as for the target's decode dump. A decode
    dump that skipped its workload (a mode run that could not act) gets a reference that skips too, with no engine
    start."""
    decoded = read_dump(decode_path)
    if decoded.meta.get(SKIPPED):
        write_dump(out_path, [], None, {**reference_meta(reference, model_dir, decoded),
                                        SKIPPED: decoded.meta[SKIPPED]})
        return
    prompts, tokens = prompts_and_tokens(decoded)
    # The last decoded token is never input: step t's distribution needs prompt + tokens[:t].
    sequences = [[*p, *t[:-1]] for p, t in zip(prompts, tokens)]
    check_prompt_lengths(sequences, settings.max_model_len, [f"decoded sequence {i}" for i in range(len(prompts))])
    started = time.perf_counter()
    with make_engine(parse_target(reference), model_dir, settings) as engine:
        scores = engine.score(sequences)
    steps = [_decode_rows(s, len(p)) for s, p in zip(scores, prompts)]
    for i, (step, row_ids) in enumerate(zip(steps, decoded.input_ids)):
        if list(step.input_ids) != list(row_ids):
            raise PortcheckError(f"decoded sequence {i}: the reference's rows follow other tokens than {decode_path}")
    write_dump(out_path, steps, [Generation(t) for t in tokens], {
        **reference_meta(reference, model_dir, decoded), "full_values": engine.full_values,
        "run_seconds": round(time.perf_counter() - started, 3),
    }, Storage.from_config(storage or {}, text_settings(load_model_config(model_dir)).get("vocab_size")))


def reference_meta(reference: str, model_dir: str | Path, decoded: Dump) -> dict:
    """The reference dump's identity: the reference's, with the decode dump's prompts and spec it scored."""
    target = parse_target(reference)
    return {"target": reference, "device": target.device, "engine": target.engine, "dtype": target.dtype,
            "model_sha": model_sha(model_dir), "tokenizer_sha": tokenizer_sha(model_dir),
            "prompts_sha": decoded.meta["prompts_sha"], "prompts": [], "decode": decoded.meta["decode"],
            "scored_for": decoded.meta.get("target"), "versions": stack_versions()}


def decoded_tokens(decode_path: str | Path) -> tuple:
    """(the dump, its decode prompts, the tokens decoded after each): refused where the dump holds none."""
    decoded = read_dump(decode_path)
    return decoded, *prompts_and_tokens(decoded)


def prompts_and_tokens(decoded: Dump) -> tuple[list[list[int]], list[list[int]]]:
    """A decode dump's prompts and the tokens decoded after each: refused where it holds none."""
    prompts = (decoded.meta.get("decode") or {}).get("prompts")
    tokens = [list(map(int, g)) for g in decoded.greedy_ids or []]
    if not prompts or len(prompts) != len(tokens):
        raise PortcheckError(f"{decoded.path} is not a decode dump (no decode prompts and tokens in it); "
                             "rerun the dump rule (dump_logits) of its target")
    return [list(map(int, p)) for p in prompts], tokens


def _decode_rows(scores: PromptScores, prompt_length: int) -> PromptScores:
    """Rows prompt_length - 1 onwards: the distributions of the decoded tokens."""
    start = prompt_length - 1
    rows = {name: getattr(scores, name)[start:] for name in ROW_FIELDS if getattr(scores, name) is not None}
    return PromptScores(input_ids=scores.input_ids[start:], **rows)
