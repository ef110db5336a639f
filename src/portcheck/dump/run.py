"""One target's run: a single engine start serves the logit dump, the adaptation check, the determinism
test and the generation samples (engine starts dominate the cost on every device)."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

from portcheck.atomic import write_json
from portcheck.model.checkpoint import load_model_config, model_sha, text_settings, tokenizer_sha
from portcheck.dump.corpus import cut_windows
from portcheck.dump.layers_file import write_layers
from portcheck.engines.layer_hooks import check_layer_indices
from portcheck.dump.compact import Storage, sample_ids
from portcheck.dump.logits_file import DumpWriter, first_difference, write_dump
from portcheck.engines.factory import make_engine
from portcheck.engines.outputs import DecodeScores, Generation
from portcheck.engines.settings import FULL_VOCAB_MAX_ENTRIES, EngineSettings
from portcheck.engines.base import check_prompt_lengths
from portcheck.env.versions import stack_versions
from portcheck.errors import PortcheckError
from portcheck.hashing import sha256_text
from portcheck.modes.catalog import fallback_calls, full_vocab_problem
from portcheck.modes.workload import mode_workload
from portcheck.targets import parse_target
from portcheck.workflow.handoff import do_work

log = logging.getLogger(__name__)


def prompts_sha(prompts: list[str]) -> str:
    return sha256_text(json.dumps(prompts, ensure_ascii=False))


def load_tokenizer(model_dir: str | Path, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=trust_remote_code)


def tokenize(tokenizer, prompts: list[str]) -> list[list[int]]:
    if not prompts:
        raise PortcheckError("the prompt list is empty; give prompts under prompts.list or a prompts.file")
    return [list(tokenizer(p)["input_ids"]) for p in prompts]


def measure_determinism(engine, prompt_ids, prompts, tokenizer, repeats: int, max_tokens: int) -> dict[str, Any]:
    """The seed's test (greedy, repeated, outputs identical) plus batch invariance (alone vs in the batch)."""
    runs = [engine.generate(prompt_ids, max_tokens) for _ in range(repeats)]
    alone = [engine.generate([ids], max_tokens)[0] for ids in prompt_ids]
    repeat_mismatches = [
        {"prompt": i, "repeat": r, "first_difference": first_difference(runs[0][i].token_ids, run[i].token_ids)}
        for r, run in enumerate(runs[1:], start=1)
        for i in range(len(prompt_ids))
        if run[i].token_ids != runs[0][i].token_ids
    ]
    batch_mismatches = [
        {"prompt": i, "first_difference": first_difference(alone[i].token_ids, runs[0][i].token_ids)}
        for i in range(len(prompt_ids))
        if alone[i].token_ids != runs[0][i].token_ids
    ]
    checks = len(prompt_ids) * (repeats - 1)
    return {
        "prompts": len(prompt_ids),
        "repeats": repeats,
        "max_tokens": max_tokens,
        "repeat_identical_rate": 1 - len(repeat_mismatches) / checks,
        "batch_invariant_rate": 1 - len(batch_mismatches) / len(prompt_ids),
        "repeat_mismatches": repeat_mismatches,
        "batch_mismatches": batch_mismatches,
        "per_prompt": [
            {
                "prompt": prompts[i],
                "first_token": tokenizer.decode(runs[0][i].token_ids[:1]),
                "text": tokenizer.decode(runs[0][i].token_ids),
                "identical_across_repeats": all(run[i].token_ids == runs[0][i].token_ids for run in runs),
                "batch_invariant": alone[i].token_ids == runs[0][i].token_ids,
            }
            for i in range(len(prompt_ids))
        ],
    }


def generate_samples(engine, prompt_ids, prompts, tokenizer, settings: dict) -> dict[str, Any]:
    outputs = engine.generate(
        prompt_ids, settings["max_tokens"], temperature=settings["temperature"], top_p=settings["top_p"],
        seed=settings["seed"],
    )
    return {
        "settings": settings,
        "samples": [
            {"prompt": p, "text": tokenizer.decode(o.token_ids), "tokens": len(o.token_ids)}
            for p, o in zip(prompts, outputs)
        ],
    }


def run_target(
    target_name: str,
    model_dir: str | Path,
    prompts: list[str],
    settings: EngineSettings,
    outputs: dict[str, str | Path],
    greedy_tokens: int = 8,
    determinism: dict | None = None,
    samples: dict | None = None,
    corpus: dict | None = None,
    decode: dict | None = None,
    layers: dict | None = None,
    modes: dict | None = None,
    storage: dict | None = None,
    while_up: dict[str, Callable] | None = None,
    not_measured: dict[str, str] | None = None,
) -> None:
    """Write outputs["logits"], ["adaptation"], and where given ["determinism"], ["samples"], ["corpus"],
    ["decode"]. corpus: {"text", "path", "sha256", "window_length", "windows"}: long-context windows scored in
    the same engine start. decode: {"prompts": N, "max_tokens": n}: the first N prompts decoded greedily.
    layers: {"windows": N, "indices": [...] | None}: the decoder layers' outputs on the prompts and the first N
    corpus windows. modes: the config's `modes` plus "corpus_text": the mode workload decoded in this (base)
    configuration, outputs["modes_base"], for the mode runs to be set against. storage: the config's `logits`
    (storage, full_max_vocab, compact_topk, compact_sample) for the corpus, decode and mode dumps; the seed
    prompts' dump keeps whole rows (msprobe's tensor metrics need them: vLLM's worker makes them from the model's
    own logits, at any vocabulary). Each dump's metadata says what its rows hold (rows_meta). while_up: other jobs'
    work on this engine, by name (portcheck.workflow.handoff), done after the adaptation is read (its kernel call
    counts stay the dump's) and before the long stages (a benchmark's peak memory stays its own); a failure there
    is logged and leaves that job to start its own engine. not_measured: {"determinism" | "samples": the setting that
    leaves it out}: a "not run" record naming it is written in its place."""
    target = parse_target(target_name)
    tokenizer = load_tokenizer(model_dir, settings.trust_remote_code)
    prompt_ids = tokenize(tokenizer, prompts)
    longest_generation = max(greedy_tokens, (determinism or {}).get("max_tokens", 0), (samples or {}).get("max_tokens", 0))
    check_prompt_lengths(prompt_ids, settings.max_model_len, prompts, new_tokens=longest_generation)
    model_text = text_settings(load_model_config(model_dir))
    check_topk(target, settings, model_text.get("vocab_size"))
    check_full_vocab(target, settings, model_text.get("vocab_size"), fallback_calls(
        "base", settings.enforce_eager, modes, corpus, decode))
    stored = Storage.from_config(storage or {}, model_text.get("vocab_size"))
    windows = corpus_windows(tokenizer, corpus, settings.max_model_len) if corpus else None
    if layers:
        check_layers(layers.get("indices"), model_text, model_dir)
    if modes:
        workload = mode_workload(tokenizer, modes["corpus_text"], prompt_ids, modes, settings.max_model_len)
    decode_prompts = prompt_ids[: decode["prompts"]] if decode else None
    if decode:
        check_prompt_lengths(decode_prompts, settings.max_model_len, prompts[: decode["prompts"]],
                             new_tokens=decode["max_tokens"])
    started, stages = time.perf_counter(), {}
    with make_engine(target, model_dir, settings) as engine:
        stages["engine_start"] = round(time.perf_counter() - started, 3)
        with timed(stages, "prompts"):
            scores = engine.score(prompt_ids)
            scores_meta = rows_meta(engine)
        with timed(stages, "greedy"):
            greedy = [engine.generate([ids], greedy_tokens)[0] for ids in prompt_ids]
        adaptation = engine.adaptation()
        for name, work in (while_up or {}).items():
            with timed(stages, f"handover {name}"):
                log.info("%s on this engine: %s", name, do_work(name, work, engine))
        if determinism:
            count = min(determinism["prompts"], len(prompt_ids))
            with timed(stages, "determinism"):
                determinism_result = measure_determinism(engine, prompt_ids[:count], prompts[:count], tokenizer,
                                                         determinism["repeats"], determinism["max_tokens"])
        if samples:
            with timed(stages, "samples"):
                samples_result = generate_samples(engine, prompt_ids, prompts, tokenizer, samples)
        # Last, so the artifacts above (and the adaptation's kernel call counts) are what they were without them.
        if windows:
            with timed(stages, "corpus"):
                corpus_writer = score_windows(engine, windows, outputs.get("corpus"), stored)
        if decode:
            with timed(stages, "decode"):
                decoded = decode_rows(engine, decode_prompts, decode["max_tokens"], stored,
                                      alone=not decode.get("batched", True))
        if modes:
            with timed(stages, "modes"):
                modes_base = workload_rows(engine, workload, modes, stored)
        if layers:
            layer_sequences = prompt_ids + (windows or [])[: layers["windows"]]
            with timed(stages, "layers"):
                captured = engine.layer_states(layer_sequences, layers.get("indices"))
    meta = dump_meta(target, model_dir, prompts, settings, greedy, tokenizer, adaptation)
    meta["run_seconds"] = round(time.perf_counter() - started, 3)
    # stage_seconds: where the session went, [stage, seconds] in the order run (the metadata's keys are sorted)
    write_dump(outputs["logits"], scores, greedy, {**meta, **scores_meta, "stage_seconds": list(stages.items())})
    write_json(outputs["adaptation"], {"target": target_name, "items": adaptation})
    if determinism:
        write_json(outputs["determinism"], {"target": target_name, **determinism_result})
    if samples:
        write_json(outputs["samples"], {"target": target_name, **samples_result})
    for kind, why in (not_measured or {}).items():
        write_json(outputs[kind], {"target": target_name, "status": "not run", "reason": why})
    if windows:
        write_corpus_dump(corpus_writer, {**meta, "run_seconds": stages["corpus"]}, corpus)
    if layers:
        write_layers(outputs["layers"], captured, state_sequences=int(layers.get("state_sequences", 1)), meta={
            "target": target_name, "model_sha": meta["model_sha"],
            "sequences_sha": sha256_text(json.dumps(layer_sequences)), "prompts": len(prompt_ids),
            "layer_types": list(model_text.get("layer_types") or []), "run_seconds": stages["layers"],
        })
    if decode:
        write_decode_dump(outputs["decode"], decoded, {**meta, "run_seconds": stages["decode"]},
                          decode["max_tokens"], stored)
    if modes:
        write_decode_dump(outputs["modes_base"], modes_base, {**meta, "mode": "base", "run": f"{target_name}+base",
                                                              "run_seconds": stages["modes"]},
                          int(modes["max_tokens"]), stored)


@contextlib.contextmanager
def timed(stages: dict[str, float], name: str):
    """stages[name]: the seconds the block took (3 decimals)."""
    started = time.perf_counter()
    yield
    stages[name] = round(time.perf_counter() - started, 3)


def workload_rows(engine, workload: list[list[int]], modes: dict,
                  storage: Storage) -> tuple[list[DecodeScores], dict]:
    """The mode workload decoded as the mode runs decode it (modes.run), so that a run and its base differ by the
    mode alone: as one batch however the engine schedules it (modes.batched), else each prompt alone."""
    batched = bool(modes.get("batched", True))
    return decode_rows(engine, workload, int(modes["max_tokens"]), storage, alone=not batched, mixed_batch=batched)


def score_windows(engine, windows: list[list[int]] | None, path, storage: Storage) -> DumpWriter | None:
    """The corpus windows scored one at a time into a streamed dump: memory holds one window's rows, whatever the
    corpus length (at 248,320 ids one 511-token window is ~0.5 GB as float32). A vLLM engine makes compact records
    in its worker instead (VLLMEngine.score_compact), where it can, whatever its logprobs_topk."""
    if not windows:
        return None
    writer = DumpWriter(path, storage)
    if storage.compact and getattr(engine, "score_compact", None):
        sample = compact_sample(engine, storage)
        records, writer.fallback_reason = engine.score_compact(windows, storage.topk, [] if sample is None else sample)
        if records is not None:
            writer.sample = sample
            for record in records:
                writer.add(record)
            writer.meta.update(full_values="logits")
            return writer
    for window in windows:
        writer.add(engine.score([window])[0])
        writer.fallback_reason = writer.fallback_reason or getattr(engine, "rows_fallback", "")
    writer.meta.update(full_values=getattr(engine, "full_values", "logits"))
    return writer


def compact_sample(engine, storage: Storage):
    """The shared sample ids of the compact records an engine makes itself (None: no sample configured)."""
    return sample_ids(engine.vocab_size, storage.sample) if storage.sample else None


def decode_rows(engine, prompts: list[list[int]], max_tokens: int, storage: Storage,
                together: bool = False, alone: bool = False,
                mixed_batch: bool = False) -> tuple[list[DecodeScores], dict]:
    """The engine's greedy decode with each step's rows (compact records made by the engine where storage is
    compact and it makes them: vLLM's worker), and what the decode dump's metadata says of them (write_decode_dump)."""
    sample = compact_sample(engine, storage) if storage.compact and hasattr(engine, "vocab_size") else None
    compact = (storage.topk, [] if sample is None else sample.tolist()) if storage.compact else None
    decoded = engine.decode(prompts, max_tokens, together=together, compact=compact, alone=alone,
                            mixed_batch=mixed_batch)
    if any(d.scores.sample_logprobs is None and d.scores.logits is None for d in decoded):
        sample = None  # the engine's top-k: no sample to keep
    return decoded, {**rows_meta(engine), "sample": sample,
                     "batches": list(getattr(engine, "decode_batches", []))}


def rows_meta(engine) -> dict:
    """What the rows of the engine's last call hold: full_values ("logits" | "logprobs") and, where its worker could
    not make them from the model's logits (vLLM's log-probs were kept: a top-k KLD is then a lower bound), why."""
    reason = getattr(engine, "rows_fallback", "")
    return {"full_values": getattr(engine, "full_values", "logits"), **({"rows_fallback": reason} if reason else {})}


def write_corpus_dump(writer: DumpWriter, meta: dict, corpus: dict) -> None:
    """The corpus windows' scores as a dump identified by the corpus text (its sha256 is the prompts_sha)."""
    writer.close({
        **meta, "prompts": [], "prompts_sha": corpus["sha256"], "greedy_text": [], "greedy_tokens": [],
        "corpus": {"path": corpus["path"], "sha256": corpus["sha256"], "window_length": corpus["window_length"],
                   "windows": corpus["windows"]},
    })


def write_decode_dump(path, rows: tuple[list[DecodeScores], dict], meta: dict, max_tokens: int,
                      storage: Storage | None = None) -> None:
    """The decode steps as a dump: rows are steps (decode_rows: the decodes and what their rows hold), the greedy
    tokens ride along, and the prompts (token ids) are in the metadata so that the reference can score prompt +
    tokens teacher-forced (rule score_decode)."""
    decoded, held = rows
    prompts = [d.prompt for d in decoded]
    batches = {"batches": held["batches"]} if held.get("batches") else {}  # the sizes the prompts were decoded in
    write_dump(path, [d.scores for d in decoded], [Generation(d.tokens) for d in decoded], {
        **meta, **{key: value for key, value in held.items() if key not in ("sample", "batches")}, "prompts": [],
        "greedy_text": [], "greedy_tokens": [],
        "prompts_sha": sha256_text(json.dumps([prompts, [d.tokens for d in decoded]])),
        "decode": {"prompts": prompts, "max_tokens": max_tokens, **batches},
    }, storage, held.get("sample"))


def check_topk(target, settings: EngineSettings, vocab: int | None) -> None:
    """A top-k wider than the vocabulary is refused before the engine starts (vLLM would fail after it)."""
    k = settings.logprobs_topk
    if target.engine == "vllm" and vocab and k > vocab:
        raise PortcheckError(
            f"targets.{target.name}.logprobs_topk is {k} but the vocabulary has {vocab} ids; use at most {vocab}, "
            "or -1 for the full vocabulary"
        )


def check_full_vocab(target, settings: EngineSettings, vocab: int | None, calls: dict[str, int], run: str = "") -> None:
    """Refused before the engine starts: vLLM's full-vocabulary log-probs where this vocabulary cannot afford them
    (modes.catalog.full_vocab_problem; config validation says the same where it knows the vocabulary)."""
    if target.engine != "vllm":
        return
    limit = int(settings.extra.get("full_vocab_max_entries") or FULL_VOCAB_MAX_ENTRIES)
    problem = full_vocab_problem(run or target.name, target.name, settings.logprobs_topk, vocab, calls, limit)
    if problem:
        raise PortcheckError(problem)


def check_layers(indices: list[int] | None, model_text: dict, model_dir) -> None:
    """layers.indices outside the model are refused before the engine starts."""
    count = model_text.get("num_hidden_layers")
    if indices is not None and count is not None:
        try:
            check_layer_indices(indices, int(count), f"the model in {model_dir}")
        except ValueError as exc:
            raise PortcheckError(str(exc)) from None


def corpus_windows(tokenizer, corpus: dict, max_model_len: int | None) -> list[list[int]]:
    """The corpus windows as token ids, refused before the engine starts when one does not fit max_model_len."""
    windows = cut_windows(list(tokenizer(corpus["text"])["input_ids"]), corpus["window_length"], corpus["windows"])
    check_prompt_lengths(windows, max_model_len, [f"corpus window {i}" for i in range(len(windows))])
    return windows


def dump_meta(target, model_dir, prompts, settings, greedy: list[Generation], tokenizer, adaptation) -> dict:
    gdn = adaptation.get("gdn_implementation", {})
    return {
        "target": target.name,
        "device": target.device,
        "engine": target.engine,
        "dtype": target.dtype,
        "model_sha": model_sha(model_dir),
        "tokenizer_sha": tokenizer_sha(model_dir),
        "prompts_sha": prompts_sha(prompts),
        "prompts": prompts,
        "greedy_text": [tokenizer.decode(g.token_ids) for g in greedy],
        "greedy_tokens": [[tokenizer.decode([t]) for t in g.token_ids] for g in greedy],
        "gdn_impl": gdn.get("value"),
        "versions": stack_versions(),
        "settings": asdict(settings),
    }
