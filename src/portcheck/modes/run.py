"""Rule run_mode: one engine start of a vLLM target with one mode on, the mode workload decoded greedily with
every step's distribution (rows from the model's logits made in vLLM's worker: whole, or compact records at a large
vocabulary; vLLM's own log-probs where the worker cannot make them, the dump saying why), in the dump format of the
decode path, so score_mode and the comparisons read it like any decode dump, and the proof that the mode ran, from
the engine's own counters: <target>/modes/<mode>.safetensors and <target>/modes/<mode>.json. A mode whose counters
show nothing says "not run" with what they showed; one they show acting but not where it matters, "inconclusive".
A mode the engine shows cannot act (a prefix shorter than a cache block) decodes nothing: its dumps say skipped.
An mtp run that drafted starts a second engine, in the base configuration, to time the workload without MTP."""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from portcheck.atomic import write_json
from portcheck.dump.compact import Storage
from portcheck import logprobs as m
from portcheck.dump.logits_file import SKIPPED, DumpWriter, first_difference
from portcheck.dump.run import (check_full_vocab, corpus_windows, decode_rows, dump_meta, load_tokenizer,
                                score_windows, tokenize, workload_rows, write_corpus_dump, write_decode_dump)
from portcheck.engines.outputs import DecodeScores
from portcheck.engines.factory import make_engine
from portcheck.engines.settings import EngineSettings
from portcheck.model.checkpoint import load_model_config, text_settings
from portcheck.modes.catalog import MODES, check_mode_model, fallback_calls, mode_settings, parse_run
from portcheck.modes.workload import batch_workload, mode_workload
from portcheck.targets import parse_target

log = logging.getLogger(__name__)
MTP_STEP_BUCKETS = 4  # acceptance by decode steps: where an acceptance falling after several rounds shows


def run_mode(run_name: str, model_dir: str | Path, prompts: list[str], settings: EngineSettings, corpus_text: str,
             modes: dict, outputs: dict[str, str | Path], corpus: dict | None = None,
             storage: dict | None = None) -> None:
    """outputs: {"decode": <target>/modes/<mode>.safetensors, "proof": <target>/modes/<mode>.json, and with
    `corpus` (as dump.run.run_target takes it) "corpus": the corpus windows scored teacher-forced in the mode: the
    prefill path, which chunked prefill and compiled graphs change too (the prefix cache is not read there)}.
    storage: the config's `logits` storage keys, as for the base run's dumps."""
    run = parse_run(run_name)
    target = parse_target(run.target)
    tokenizer = load_tokenizer(model_dir, settings.trust_remote_code)
    prompt_ids = tokenize(tokenizer, prompts)
    workload = mode_workload(tokenizer, corpus_text, prompt_ids, modes, settings.max_model_len)
    batch = batch_workload(tokenizer, corpus_text, prompt_ids, modes, settings.max_model_len) \
        if run.mode == "batch" else None
    model_text = text_settings(load_model_config(model_dir))
    check_mode_model(run.mode, model_text, model_dir, int(modes["spec_tokens"]))
    stored = Storage.from_config(storage or {}, model_text.get("vocab_size"))
    windows = corpus_windows(tokenizer, corpus, settings.max_model_len) if corpus else None
    engine_settings = mode_settings(settings, run.mode, modes)
    check_full_vocab(target, engine_settings, model_text.get("vocab_size"),
                     fallback_calls(run.mode, engine_settings.enforce_eager, modes, corpus, None), run.name)
    steps = int(modes["max_tokens"])
    started = time.perf_counter()
    with make_engine(target, model_dir, engine_settings) as engine:
        passes = engine.count_passes() if run.mode in ("chunked", "batch") else None
        if run.mode == "graph":
            engine.count_replays()  # graphs are captured at the engine start; the workload must replay them
        block = engine.cache_block_size() if run.mode == "prefix-cache" else None
        skipped = workload_skipped(run.mode, block, modes)
        if run.mode == "prefix-cache" and not skipped:
            # fills the cache, which the measured pass reads: with the prompts' own blocks only (a block that also
            # holds decoded tokens hashes apart from any prompt's), so one step each does what the decode did
            for ids in workload:
                engine.generate([ids], 1)
        if batch:  # alone as a batch of one: vLLM's log-probs on both sides of the alone-vs-batch figures
            alone = [engine.decode([ids], steps, together=True)[0] for ids in workload]
            alone_passes = engine.pass_counts() if passes and passes.get("installed") else passes
            passes = engine.count_passes()
        decode_started = time.perf_counter()
        if skipped:
            decoded, held = [], {}
        elif batch:
            decoded, held = decode_rows(engine, batch, steps, stored, together=True)
        else:  # as the base configuration's (dump.run.workload_rows): the two differ by the mode alone
            decoded, held = workload_rows(engine, workload, modes, stored)
        decoded = decoded[: len(workload)]
        decode_seconds = time.perf_counter() - decode_started
        corpus_started = time.perf_counter()
        corpus_writer = score_windows(engine, None if skipped else windows, outputs.get("corpus"), stored)
        corpus_seconds = time.perf_counter() - corpus_started
        evidence = {"cached_tokens": list(engine.cached_tokens), "counters": engine.counters(),
                    "cache_block_tokens": block,
                    "passes": engine.pass_counts() if passes and passes.get("installed") else passes,
                    "compilation": engine.compilation() if run.mode == "graph" else None}
        if run.mode == "mtp":
            evidence["spec_by_steps"], evidence["generate_seconds"] = spec_by_steps(
                engine, workload, steps, MTP_STEP_BUCKETS)
        if batch:
            evidence.update(alone_passes=alone_passes, batch_size=len(batch),
                            alone_vs_batch=alone_vs_batch(alone, decoded))
        adaptation = engine.adaptation()
        timings = dict(engine.timings)
    meta = dump_meta(target, model_dir, prompts, engine_settings, [], tokenizer, adaptation)
    meta.update(target=run.target, mode=run.mode, run=run.name, run_seconds=round(decode_seconds, 3),
                **({SKIPPED: skipped} if skipped else {}))
    write_decode_dump(outputs["decode"], (decoded, held), meta, steps, stored)
    if windows:
        write_corpus_dump(corpus_writer or DumpWriter(outputs["corpus"], stored),
                          {**meta, "run_seconds": round(corpus_seconds, 3)}, corpus)
    if run.mode == "mtp" and spec_counters(evidence["counters"]).get("num_drafts"):
        # after the run's dumps are written: they stand whatever this second engine start does
        evidence["base_timing"] = base_timing(target, model_dir, settings, workload, steps)
    proof = mode_proof(run.mode, evidence, workload, modes)
    write_json(outputs["proof"], {
        "run": run.name, "target": run.target, "mode": run.mode, "description": MODES[run.mode], **proof,
        "evidence": evidence, "engine": {k: v for k, v in vars(engine_settings).items() if k != "extra"}
        | {"vllm_kwargs": engine_settings.extra.get("vllm_kwargs")},
        "decode_seconds": round(decode_seconds, 3), "timings": timings,
        "job_seconds": round(time.perf_counter() - started, 3),
        "workload": {"prompts": len(workload), "prompt_tokens": [len(w) for w in workload],
                     "prefix_tokens": int(modes["prefix_tokens"]), "max_tokens": int(modes["max_tokens"])},
    })


def workload_skipped(mode: str, block: int | None, modes: dict) -> str:
    """Why the run's workload is not decoded nor its corpus scored ("" where they are): the mode could not act, so
    its rows would be the base configuration's again (and the reference's scores of them another engine start);
    the proof says "not run" with the fix, and its dumps say skipped."""
    if mode == "prefix-cache" and prefix_under_block(block, modes):
        return (f"the prefix cache could not act: vLLM's cache block of {block} tokens is longer than the "
                f"workload's shared prefix of {modes['prefix_tokens']} tokens")
    return ""


def alone_vs_batch(alone: list[DecodeScores], batched: list[DecodeScores]) -> dict[str, Any]:
    """Each workload sequence decoded alone against the same sequence decoded in the batch: greedy tokens equal,
    and the log-prob of each chosen token (up to the first differing token) apart."""
    firsts, deltas = [], []
    for a, b in zip(alone, batched):
        differ = first_difference(a.tokens, b.tokens)
        firsts.append(differ)
        common = len(a.tokens) if differ is None else differ
        deltas.append(np.abs(chosen_logprobs(a)[:common] - chosen_logprobs(b)[:common]))
    delta = np.concatenate(deltas) if deltas else np.zeros(0)
    delta = delta[np.isfinite(delta)]
    return {"sequences": len(firsts), "tokens_equal": sum(d is None for d in firsts), "first_difference": firsts,
            "max_abs_logprob_delta": float(delta.max()) if delta.size else None,
            "mean_abs_logprob_delta": float(delta.mean()) if delta.size else None, "steps_compared": int(delta.size)}


def chosen_logprobs(decoded: DecodeScores) -> np.ndarray:
    """The log-prob of the token each step chose (row t's next token is tokens[t])."""
    tokens = np.asarray(decoded.tokens)
    scores = decoded.scores
    if scores.logits is not None:
        return m.next_token_logprobs(m.log_softmax(scores.logits), tokens)
    return np.asarray(scores.token_logprobs, dtype=np.float64)[: len(tokens)]


def mode_proof(mode: str, evidence: dict, workload: list[list[int]], modes: dict) -> dict[str, Any]:
    """{"status": "ran" | "inconclusive" | "not run", "proof": what the engine's counters say}."""
    counters = evidence.get("counters") or {}
    if mode == "prefix-cache":
        cached = [c for c in evidence.get("cached_tokens") or [] if c is not None]
        hits = counters.get("vllm:prefix_cache_hits")
        if cached and sum(cached) > 0:
            return ran(f"the measured pass read {sum(cached)} prompt tokens from the prefix cache "
                       f"({', '.join(map(str, cached))} per request; vllm:prefix_cache_hits {_int(hits)})")
        per_request = cached or "not reported"
        block = evidence.get("cache_block_tokens")
        if prefix_under_block(block, modes):
            return not_run(f"vLLM's cache block is {block} tokens (cache_config.block_size, raised so one attention "
                           "page holds a Gated DeltaNet state), longer than the workload's shared prefix of "
                           f"{modes['prefix_tokens']} tokens: only whole blocks are cached, so nothing could hit and "
                           f"the workload was not decoded; set modes.prefix_tokens to at least {block} "
                           "(max_model_len must hold the prefix, a prompt and modes.max_tokens)")
        return not_run(f"no prompt token came from the prefix cache (cached tokens per request: {per_request}, "
                       f"vllm:prefix_cache_hits {_int(hits)})")
    if mode == "chunked":
        passes = evidence.get("passes") or {}
        if not passes.get("installed"):
            return not_run(f"forward passes not counted: {passes.get('reason', 'no counter')}")
        longest = max(len(w) for w in workload)
        if 0 < passes["max_tokens"] <= int(modes["chunk_tokens"]) < longest:
            return ran(f"{passes['passes']} forward passes of at most {passes['max_tokens']} tokens for prompts of "
                       f"up to {longest} tokens: every prefill crossed passes")
        return not_run(f"the longest forward pass held {passes['max_tokens']} tokens for prompts of up to {longest}: "
                       "the prefill was not split")
    if mode == "batch":
        return batch_proof(evidence)
    if mode == "mtp":
        return mtp_proof(evidence)
    if mode == "graph":
        return graph_proof(evidence.get("compilation") or {})
    return not_run(f"no proof defined for mode {mode}")


SPEC_COUNTERS = ("num_drafts", "num_draft_tokens", "num_accepted_tokens", "num_accepted_tokens_per_pos")


def spec_counters(counters: dict) -> dict[str, Any]:
    """vLLM's spec-decode counters by short name (num_drafts, ...): `vllm:spec_decode_<name>` offline, with a
    `_total` suffix on /metrics, `vllm_` on some lines; absent ones are missing from the result."""
    found = {}
    for name, value in counters.items():
        short = name.split("spec_decode_", 1)[-1].removesuffix("_total")
        if "spec_decode_" in name and short in SPEC_COUNTERS:
            found[short] = value
    return found


def counter_delta(after: dict, before: dict) -> dict[str, Any]:
    """Spec-decode counters accumulated between two readings (per-position lists element by element)."""
    delta = {}
    for name, value in after.items():
        old = before.get(name)
        if isinstance(value, list):
            old = old or [0] * len(value)
            delta[name] = [a - b for a, b in zip(value, old)]
        else:
            delta[name] = value - (old or 0)
    return delta


def acceptance(counts: dict) -> dict[str, Any]:
    """Acceptance figures from spec-decode counts (vLLM's definitions: rate = accepted / draft tokens, mean
    acceptance length = 1 + accepted / drafts, per-position rate = accepted at position i / drafts)."""
    drafts, draft_tokens = counts.get("num_drafts") or 0, counts.get("num_draft_tokens") or 0
    accepted = counts.get("num_accepted_tokens") or 0
    per_pos = counts.get("num_accepted_tokens_per_pos")
    return {"drafts": drafts, "draft_tokens": draft_tokens, "accepted": accepted,
            "acceptance_rate": accepted / draft_tokens if draft_tokens else None,
            "mean_accepted_length": 1 + accepted / drafts if drafts else None,
            "per_position": [a / drafts for a in per_pos] if drafts and per_pos else None,
            "draft_tokens_per_accepted": draft_tokens / accepted if accepted else None}


def mtp_proof(evidence: dict) -> dict[str, Any]:
    """Ran when vLLM's spec-decode counters show drafts; the figures: acceptance overall, per draft position, and by
    decode steps (evidence["spec_by_steps"]: cumulative counts after generating the workload to each boundary)."""
    counts = spec_counters(evidence.get("counters") or {})
    if not counts.get("num_drafts"):
        return not_run(f"vLLM's spec-decode counters show no draft (spec_decode_num_drafts "
                       f"{_int(counts.get('num_drafts'))})")
    figures = acceptance(counts)
    by_steps, previous, start = [], {}, 1
    for cumulative in evidence.get("spec_by_steps") or []:
        part = acceptance(counter_delta(cumulative["counts"], previous))
        by_steps.append({"steps": f"{start}-{cumulative['steps']}", **part})
        previous, start = cumulative["counts"], cumulative["steps"] + 1
    return ran(f"{_int(figures['drafts'])} drafts of {_int(figures['draft_tokens'])} tokens, "
               f"{_int(figures['accepted'])} accepted", **figures, acceptance_by_steps=by_steps,
               generate_seconds=evidence.get("generate_seconds"),
               base_generate_seconds=(evidence.get("base_timing") or {}).get("generate_seconds"))


def base_timing(target, model_dir, settings: EngineSettings, workload: list[list[int]], steps: int) -> dict:
    """The mtp run's speed-up's other side: the workload generated in the base configuration, in an engine started
    here after the MTP engine closed (one more start, only where an mtp run drafted; the target's dump no longer
    times it for every report). The whole batch's prefill and a decode step first, untimed, as the MTP engine had
    run the workload before its own timing. A failure leaves the speed-up unknown, not the run failed."""
    engine_log = settings.extra.get("log_file")
    extra = {**settings.extra, "log_file": str(Path(engine_log).with_suffix(".base.log"))} if engine_log \
        else settings.extra
    try:
        with make_engine(target, model_dir, dataclasses.replace(settings, extra=extra)) as engine:
            engine.generate(workload, 2)
            return {"generate_seconds": timed_generate(engine, workload, steps),
                    "engine_start_s": engine.timings.get("engine_start_s"), "log": extra.get("log_file")}
    except Exception as error:  # noqa: BLE001 - whatever the second engine does, the MTP run's figures stand
        log.warning("the base configuration's timing failed, the speed-up is unknown: %s", error)
        return {"error": f"{type(error).__name__}: {error}", "log": extra.get("log_file")}


def timed_generate(engine, workload: list[list[int]], steps: int) -> float:
    """Seconds to generate the mode workload greedily as one batch without log-probs rows."""
    started = time.perf_counter()
    engine.generate(workload, steps)
    return round(time.perf_counter() - started, 3)


def spec_by_steps(engine, workload: list[list[int]], steps: int, buckets: int) -> tuple[list[dict], float]:
    """The workload generated greedily to each bucket boundary of the decode steps, the spec-decode counters read
    around each: cumulative counts up to that step (a later bucket's acceptance is the difference; each run
    replays the same greedy rounds, the last one cut at the boundary). Also the seconds of the full-length run,
    the decode time with MTP."""
    bounds = sorted({max(1, steps * i // buckets) for i in range(1, buckets + 1)})
    cumulative, seconds = [], None
    for bound in bounds:
        before = spec_counters(engine.counters())
        seconds = timed_generate(engine, workload, bound)
        cumulative.append({"steps": bound, "counts": counter_delta(spec_counters(engine.counters()), before)})
    return cumulative, seconds


def graph_proof(facts: dict) -> dict[str, Any]:
    """Ran only when the worker's counters show graphs captured (vLLM's num_cudagraph_captured) and replayed during
    the workload (the platform graph class's replay, counted in the worker); compiled without replay is
    inconclusive ("compiled, no graph replay"): it says nothing of capture and replay, the graph-mode risk."""
    counter = facts.get("counter") or {}
    seen = {k: counter.get(k, 0) for k in ("num_graphs_seen", "num_backend_compilations", "num_cudagraph_captured")}
    replays = facts.get("graph_replays")
    mode_name = facts.get("mode") or facts.get("level")
    figures = (f"compilation mode {mode_name}, CUDA-graph mode {facts.get('cudagraph_mode')}; the worker's "
               "compilation counter: " + ", ".join(f"{k} {v}" for k, v in seen.items())
               + f"; graph replays during the workload: {'not counted' if replays is None else replays}")
    if seen["num_cudagraph_captured"] and replays:
        return ran(figures)
    if seen["num_graphs_seen"] and str(mode_name) not in ("NONE", "0", "None"):
        cpu = (" (vLLM's CPU backend compiles with torch.compile and has no graph capture or replay)"
               if facts.get("device_type") == "cpu" else "")
        return inconclusive(f"compiled, no graph replay{cpu}: {figures}")
    return not_run(f"compilation mode {mode_name}; the worker's compilation counter saw no graph "
                   f"({facts.get('counter_error') or seen})")


def batch_proof(evidence: dict) -> dict[str, Any]:
    """Decode passes of batch_size tokens in the batch (one step of every sequence) and of 1 token alone."""
    batch, alone = evidence.get("passes") or {}, evidence.get("alone_passes") or {}
    if not (batch.get("installed") and alone.get("installed")):
        return not_run(f"forward passes not counted: {batch.get('reason') or alone.get('reason') or 'no counter'}")
    size = int(evidence["batch_size"])
    together = (batch.get("passes_by_tokens") or {}).get(str(size), 0)
    single = (alone.get("passes_by_tokens") or {}).get("1", 0)
    if not (together and single):
        return not_run(f"no decode pass held all {size} sequences ({batch.get('passes_by_tokens')}) or none held "
                       f"one alone ({alone.get('passes_by_tokens')})")
    figures = evidence.get("alone_vs_batch") or {}
    return ran(f"{together} decode passes held {size} tokens (a step of all {size} sequences), {single} passes "
               f"held 1 alone; alone vs in the batch: greedy tokens equal in {figures.get('tokens_equal')} of "
               f"{figures.get('sequences')} sequences, chosen-token log-probs apart by at most "
               f"{_sci(figures.get('max_abs_logprob_delta'))}", alone_vs_batch=figures)


def _sci(value) -> str:
    return "unknown" if value is None else f"{value:.3g}"


def prefix_under_block(block: int | None, modes: dict) -> bool:
    """The workload's shared prefix is shorter than one prefix-cache block, so no prompt token can be read from
    the cache (vLLM caches whole blocks only)."""
    return block is not None and int(modes["prefix_tokens"]) < block


def ran(proof: str, **figures) -> dict[str, Any]:
    return {"status": "ran", "proof": proof, **figures}


def not_run(proof: str) -> dict[str, Any]:
    return {"status": "not run", "proof": proof}


def inconclusive(proof: str) -> dict[str, Any]:
    """The mode acted, but the counters cannot show the part of it the mode exists to test: never a pass."""
    return {"status": "inconclusive", "proof": proof}


def _int(value) -> str:
    return "not reported" if value is None else f"{int(value)}"
