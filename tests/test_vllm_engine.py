"""The vLLM engine on the real vLLM CPU backend, against the transformers fp32 model, on the tiny Qwen3.5.

One engine start for the whole module (each costs ~1-1.5 min on 2 cores); the tests that need no engine run
without one. The engine-death test kills the engine, so it and the close test run last (file order).
"""

from __future__ import annotations

import os
import re
import signal
import threading
from collections import Counter

import numpy as np
import pytest

from portcheck.engines.base import check_prompt_lengths
from portcheck.engines.factory import make_engine
from portcheck.engines.settings import EngineSettings
from portcheck.engines.vllm import engine as vllm_engine
from portcheck.engines.vllm import cpu_memory, engine_args, logs, preflight, process
from portcheck.engines.vllm.preflight import check_vllm_stack
from portcheck.errors import PortcheckError
from portcheck.targets import parse_target

from conftest import has_gdn, layer_types

pytestmark = pytest.mark.vllm

TOPK = 5
MAX_MODEL_LEN = 128
TEXTS = [
    "The capital of France is",
    "Machine learning is a branch of",
    "Python is a programming language used for",
    "The solar system consists of",
    "法国的首都是",
]


# tiny_model_dir comes from conftest.py (the tiny Qwen3.5, built once per session).


@pytest.fixture(scope="module")
def prompts(tiny_model_dir) -> list[list[int]]:
    """Token ids of TEXTS with the model's tokenizer; random ids when the tokenizer cannot encode them."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    ids = [list(tokenizer(t)["input_ids"]) for t in TEXTS]
    if all(len(set(p)) > 2 for p in ids) and tokenizer.unk_token_id not in {i for p in ids for i in p}:
        return ids
    rng = np.random.default_rng(0)
    return [rng.integers(1, 500, size=n).tolist() for n in (6, 9, 12, 3, 1)]


@pytest.fixture(scope="module")
def hf_logits(tiny_model_dir, prompts) -> list[np.ndarray]:
    """fp32 transformers raw logits at every position of each prompt: the reference."""
    import torch
    from transformers import AutoModelForCausalLM

    from portcheck.engines.hf import transformers_config

    # transformers' own config class: vLLM 0.23 registers its Qwen3_5Config with AutoConfig in this process
    config = transformers_config(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), config=config, dtype=torch.float32).eval()
    with torch.inference_mode():
        out = [model(input_ids=torch.tensor([p])).logits[0].float().numpy() for p in prompts]
    del model
    return out


@pytest.fixture(scope="module")
def hf_logprobs(hf_logits) -> list[np.ndarray]:
    """fp32 transformers log-softmax at every position of each prompt."""
    return [log_softmax(logits) for logits in hf_logits]


def log_softmax(logits: np.ndarray) -> np.ndarray:
    return logits - np.logaddexp.reduce(logits.astype(np.float64), axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def engine(tiny_model_dir, tmp_path_factory):
    # max_logprobs=-1 lets the same engine also serve the full-vocabulary test (one engine start per module).
    # Its own processes (vLLM's default on gpu/npu), so the watchdog and engine-death tests have a process to kill;
    # the in-process engine (the cpu default) is compared with it below.
    settings = EngineSettings(
        max_model_len=MAX_MODEL_LEN, max_num_seqs=8, max_num_batched_tokens=512, logprobs_topk=TOPK, in_process=False,
        extra={"log_file": str(tmp_path_factory.mktemp("vllm_log") / "engine.log"),
               "vllm_kwargs": {"max_logprobs": -1}},
    )
    engine = make_engine(parse_target("cpu-vllm-bf16"), tiny_model_dir, settings)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def scores(engine, prompts):
    """vLLM's own prompt log-probs (top-k): what the worker's rows are checked against."""
    return engine.logprob_scores(prompts)


@pytest.fixture(scope="module")
def rows(engine, prompts):
    """The seed prompts' scores as a dump gets them: whole raw logits rows made in the worker."""
    return engine.score(prompts)


def bf16_steps(logits: np.ndarray, steps: int = 2) -> np.ndarray:
    """Per row, `steps` bf16 steps (8 significant bits) at the row's largest |logit|: how far two vLLM passes whose
    batches differ may put a log-prob, each rounding the bf16 logits its own way. Measured on the shipped model: up to
    0.034 at logits ~5.5 (a step there: 0.031) for a 3-token seed prompt, 0.056 at ~9 (0.0625) for a decode step; 0
    wherever the batch is the same."""
    return steps * 2.0 ** (np.floor(np.log2(np.abs(logits).max(axis=1, keepdims=True))) - 7)


# -- no engine needed ------------------------------------------------------------------------------------------


def test_a_pass_is_split_by_request_as_the_model_runner_laid_it_out():
    """worker_logits.pass_layout reads the runner's input_batch (request ids in pass order) and query_start_loc
    (each request's first row; stale entries past num_reqs ignored); a runner without them: None (decoded alone)."""
    from types import SimpleNamespace

    from portcheck.engines.vllm.worker_logits import pass_layout

    runner = SimpleNamespace(input_batch=SimpleNamespace(req_ids=["3-a", "1-b", "stale"], num_reqs=2),
                             query_start_loc=SimpleNamespace(np=np.array([0, 1, 6, 6, 6])))
    assert pass_layout(runner) == [("3-a", 0, 1), ("1-b", 1, 6)]
    assert pass_layout(SimpleNamespace(input_batch=runner.input_batch)) is None
    assert pass_layout(None) is None


def test_check_prompt_lengths_names_the_prompt():
    check_prompt_lengths([[1] * 9, [2] * 3], 10, names=["short one", "other"])
    with pytest.raises(PortcheckError, match=r"prompt 1 \('the long prompt'\) has 10 tokens.*max_model_len 10"):
        check_prompt_lengths([[1] * 3, [1] * 10], 10, names=["ok", "the long prompt"])
    with pytest.raises(PortcheckError, match="with 4 new token"):
        check_prompt_lengths([[1] * 7], 10, new_tokens=4)
    with pytest.raises(PortcheckError, match="no tokens"):
        check_prompt_lengths([[]], 10)


def test_npu_without_vllm_ascend_says_what_to_install(monkeypatch):
    real = preflight.importable
    monkeypatch.setattr(preflight, "importable", lambda module: False if module == "vllm_ascend" else real(module))
    with pytest.raises(PortcheckError, match="vllm-ascend") as info:
        check_vllm_stack("npu")
    assert "profiles/npu" in str(info.value)


def test_cuda_triton_beside_triton_ascend_is_refused_with_the_fix():
    """Issue 8 finding 10: on x86_64 Ascend hosts vLLM's install brings CUDA's triton over triton-ascend."""
    with pytest.raises(PortcheckError, match=r"pip uninstall -y triton triton-ascend && pip install triton-ascend==3\.2\.0"):
        preflight.check_triton_for_npu("3.5.0", "3.2.0")
    with pytest.raises(PortcheckError, match="needs triton-ascend"):
        preflight.check_triton_for_npu(None, None)
    preflight.check_triton_for_npu(None, "3.2.0")  # aarch64, or x86_64 after the fix


def test_missing_vllm_names_the_fix(monkeypatch):
    monkeypatch.setattr(preflight, "importable", lambda module: False)
    with pytest.raises(PortcheckError, match="make"):
        check_vllm_stack("cpu")


def test_worker_extension_imports_light():
    """vLLM's worker imports the extension by its dotted path: neither the engine nor torch/vllm come along."""
    import subprocess
    import sys

    from portcheck.engines.vllm.engine_args import WORKER_EXTENSION_CLS

    module, _, name = WORKER_EXTENSION_CLS.rpartition(".")
    check = (f"import sys, {module}; assert hasattr({module}, {name!r}); "
             "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'vllm', 'numpy') "
             "or m == 'portcheck.engines.vllm.engine'))")
    run = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "[]"


def test_watchdog_unblocks_a_utility_call_in_flight_when_the_engine_dies():
    """Issue 8 finding 7: collective_rpc (introspection, memory queries) waits on a future in the client's
    utility_results with no timeout; the watchdog must fail it, not only the output queue, when the engine dies."""
    import queue
    from concurrent.futures import Future

    from vllm.v1.engine.exceptions import EngineDeadError

    class FakeEngineCore:  # the attributes vLLM's SyncMPClient keeps (vllm/v1/engine/core_client.py)
        def __init__(self):
            self.outputs_queue = queue.Queue()
            self.utility_results = {7: Future()}

    core, alive = FakeEngineCore(), threading.Event()
    alive.set()
    with process.watchdog(lambda: not alive.is_set(), lambda: core, interval=0.05):
        alive.clear()  # the engine process dies while the utility call waits
        with pytest.raises(EngineDeadError):
            core.utility_results[7].result(timeout=10)  # without the watchdog: a timeout here (a hang in real use)
    assert isinstance(core.outputs_queue.get_nowait(), EngineDeadError)


# -- the engine ------------------------------------------------------------------------------------------------


def test_the_worker_makes_no_rows_where_they_would_not_be_the_positions_and_says_why():
    """Graph mode (hooks traced, not called) and, when decoding, speculative decoding (a verification pass scores
    several rows per step): the engine then keeps vLLM's own log-probs, with this reason in the dump."""
    from types import SimpleNamespace as Config

    from portcheck.engines.vllm import worker_logits

    graph = Config(vllm_config=Config(model_config=Config(enforce_eager=False)))
    assert worker_logits.start(graph, "logits")["reason"].startswith("graph mode (enforce_eager off)")
    spec = Config(vllm_config=Config(model_config=Config(enforce_eager=True), speculative_config=object()))
    assert "speculative decoding" in worker_logits.start(spec, "compact", 4, [], decoding=True)["reason"]


def test_engine_started_and_timed(engine):
    assert engine.timings["engine_start_s"] > 0
    assert engine.max_model_len == MAX_MODEL_LEN


def test_score_shapes_and_row_convention(scores, prompts):
    assert len(scores) == len(prompts)
    for ids, s in zip(prompts, scores):
        T = len(ids)
        assert s.logits is None
        assert s.input_ids.tolist() == ids
        assert s.topk_ids.shape == (T, TOPK) and s.topk_logprobs.shape == (T, TOPK)
        assert s.token_logprobs.shape == (T,)
        assert np.isnan(s.token_logprobs[-1])
        assert np.isfinite(s.token_logprobs[:-1]).all() and (s.token_logprobs[:-1] <= 0).all()
        assert (np.diff(s.topk_logprobs, axis=1) <= 0).all(), "top-k not sorted by descending log-prob"
        assert all(len(set(row)) == TOPK for row in s.topk_ids.tolist())
        # a prompt token inside the top-k has the same log-prob in both places
        for t in range(T - 1):
            hit = np.flatnonzero(s.topk_ids[t] == ids[t + 1])
            if hit.size:
                assert s.topk_logprobs[t, hit[0]] == pytest.approx(s.token_logprobs[t])


def test_top1_agrees_with_hf_fp32(scores, hf_logprobs):
    """Row t's vLLM bf16 top-1 equals HF fp32's argmax of row t (same convention), except near-ties."""
    agree = total = decisive_disagree = 0
    for s, ref in zip(scores, hf_logprobs):
        top2 = np.sort(ref, axis=1)[:, -2:]
        gap = top2[:, 1] - top2[:, 0]
        same = s.topk_ids[:, 0] == ref.argmax(axis=1)
        agree += int(same.sum())
        total += len(same)
        decisive_disagree += int((~same & (gap > 0.2)).sum())
    assert agree / total >= 0.9, f"top-1 agreement {agree}/{total}"
    assert decisive_disagree == 0, f"{decisive_disagree} rows disagree although HF's top-2 gap > 0.2 nats"


def test_logprobs_match_hf_within_bf16(scores, hf_logprobs, prompts):
    for ids, s, ref in zip(prompts, scores, hf_logprobs):
        T = len(ids)
        expected = ref[np.arange(T - 1), ids[1:]]
        np.testing.assert_allclose(s.token_logprobs[:-1], expected, atol=0.1, rtol=0.02)
        # the top-k log-probs are HF's log-probs of the same ids
        np.testing.assert_allclose(s.topk_logprobs, np.take_along_axis(ref, s.topk_ids, axis=1), atol=0.1, rtol=0.02)


def test_full_vocabulary_scores(engine, prompts, scores, hf_logprobs, monkeypatch):
    """logprobs_topk == -1: full [T, V] log-probs in `logits`, consistent with the top-k run and with HF fp32."""
    monkeypatch.setattr(engine.settings, "logprobs_topk", -1)
    full = engine.logprob_scores(prompts)
    for ids, f, s, ref in zip(prompts, full, scores, hf_logprobs):
        assert f.topk_ids is None and f.logits.dtype == np.float32
        assert f.logits.shape == (len(ids), engine.vocab_size) == ref.shape
        np.testing.assert_allclose(np.exp(f.logits).sum(axis=1), 1.0, atol=1e-3)
        np.testing.assert_array_equal(np.take_along_axis(f.logits, s.topk_ids, axis=1), s.topk_logprobs)
        np.testing.assert_array_equal(f.token_logprobs, s.token_logprobs)
        np.testing.assert_allclose(f.logits, ref, atol=0.15)


def test_seed_rows_are_the_models_raw_logits_whatever_logprobs_topk(engine, prompts, rows, scores, hf_logits,
                                                                    tmp_path):
    """At logprobs_topk 5 the seed prompts still get whole raw logits rows from the worker: HF fp32's within bf16,
    vLLM's own top-k log-probs to the bf16 rounding of a logit (exactly where the batch is the same), and a dump of kind full whose KLD against the reference is exact and whose
    msprobe metrics compare raw logits."""
    from portcheck.compare.compare import kld_basis, msprobe_basis
    from portcheck.dump.logits_file import read_dump, write_dump
    from portcheck.dump.run import rows_meta
    from portcheck.engines.outputs import PromptScores

    assert (engine.full_values, engine.rows_fallback) == ("logits", "")
    for ids, r, s, ref in zip(prompts, rows, scores, hf_logits):
        assert r.topk_ids is None and r.logits.dtype == np.float32 and r.logits.shape == ref.shape
        assert np.abs(np.logaddexp.reduce(r.logits, axis=1)).min() > 1  # raw logits, not log-probs
        np.testing.assert_allclose(r.logits, ref, atol=0.15, rtol=0.02)
        gap = np.abs(np.take_along_axis(log_softmax(r.logits), s.topk_ids, axis=1) - s.topk_logprobs)
        assert (gap <= bf16_steps(r.logits)).all(), (gap.max(axis=1), bf16_steps(r.logits)[:, 0])
        np.testing.assert_allclose(r.token_logprobs, s.token_logprobs, atol=2e-3)
    meta = {"model_sha": "m", "tokenizer_sha": "t", "prompts_sha": "p"}
    write_dump(tmp_path / "ref.safetensors", [PromptScores(np.asarray(ids), logits=ref)
                                              for ids, ref in zip(prompts, hf_logits)], None,
               {**meta, "target": "cpu-hf-fp32"})
    write_dump(tmp_path / "tgt.safetensors", rows, None, {**meta, "target": "cpu-vllm-bf16", **rows_meta(engine)})
    ref, tgt = read_dump(tmp_path / "ref.safetensors"), read_dump(tmp_path / "tgt.safetensors")
    assert tgt.kind == "full" and tgt.meta["full_values"] == "logits" and "rows_fallback" not in tgt.meta
    assert (kld_basis(ref, tgt), msprobe_basis(ref, tgt)) == ("exact", "logits")


def test_decode_steps_are_rows_from_the_worker(engine, prompts, rows):
    """Each sequence decoded alone: its last max_tokens rows are the steps (step 0 is the last prompt row, as
    scored teacher-forced); whole rows, or compact records; vLLM's top-k where decoded as one batch, saying why."""
    from portcheck.dump.compact import sample_ids

    steps = 6
    decoded = engine.decode(prompts[:2], steps)
    assert (engine.full_values, engine.rows_fallback) == ("logits", "")
    greedy = engine.generate(prompts[:2], steps)
    for d, g, r in zip(decoded, greedy, rows):
        assert d.tokens == g.token_ids and d.scores.logits.shape == (steps, engine.vocab_size)
        np.testing.assert_allclose(d.scores.logits[0], r.logits[-1], atol=0.07)
        np.testing.assert_allclose(d.scores.token_logprobs[:-1], g.logprobs[:-1], atol=0.05)
    sample = sample_ids(engine.vocab_size, 16)
    compact = engine.decode(prompts[:2], steps, compact=(8, sample.tolist()))
    for c, d in zip(compact, decoded):
        assert c.tokens == d.tokens and c.scores.logits is None
        assert c.scores.topk_ids.shape == (steps, 8) and c.scores.sample_logprobs.shape == (steps, 16)
        np.testing.assert_allclose(c.scores.sample_logprobs, log_softmax(d.scores.logits)[:, sample], atol=1e-4)
        assert np.isfinite(c.scores.rest_logmass).all()
    together = engine.decode(prompts[:2], steps, together=True)
    assert "one batch" in engine.rows_fallback and together[0].scores.topk_ids.shape == (steps, TOPK)


def test_decode_rows_of_one_batch_are_each_prompt_alone_s_to_bf16_rounding(engine, prompts, monkeypatch):
    """The prompts decoded as one batch (each pass's rows split by request in the worker) give each prompt alone's
    tokens and rows, in prompt order, to the rounding of the batch's bf16 matrix products (one ulp of a logit,
    0.0625 at 8-16, measured); not where the prompts would not be prefilled whole in the first pass, unless asked
    (mixed_batch: a prefill then crosses passes shared with the other sequence)."""
    steps, chosen = 12, [prompts[1], prompts[0], prompts[2]]
    assert engine.batch_decodes(chosen) and not engine.batch_decodes(chosen[:1])
    assert not engine.batch_decodes([list(range(1, 300))] * 2)  # 598 tokens > max_num_batched_tokens 512
    batched, problem = engine._decode_in_worker(chosen, steps, None, True)
    alone, _ = engine._decode_in_worker(chosen, steps, None, False)
    assert problem == "" and [d.prompt for d in batched] == chosen
    for b, a in zip(batched, alone):
        assert b.tokens == a.tokens and b.scores.logits.shape == a.scores.logits.shape == (steps, engine.vocab_size)
        assert (np.abs(b.scores.logits - a.scores.logits) <= bf16_steps(a.scores.logits)).all()
    decoded = engine.decode(chosen, steps)
    assert engine.rows_fallback == "" and [d.tokens for d in decoded] == [a.tokens for a in alone]
    assert engine.decode_batches == [3]
    engine.decode(chosen, steps, alone=True)
    assert engine.decode_batches == [1, 1, 1]
    # the mode workload's batch (mixed_batch): one batch even where a prefill crosses passes (550 tokens > 512)
    split = [list(range(1 + i, 111 + i)) for i in range(5)]
    assert not engine.batch_decodes(split)
    mixed = engine.decode(split, steps, mixed_batch=True)
    assert engine.rows_fallback == "" and engine.decode_batches == [5]
    for x, a in zip(mixed, engine.decode(split, steps, alone=True)):
        assert x.tokens == a.tokens and (np.abs(x.scores.logits - a.scores.logits) <= bf16_steps(a.scores.logits)).all()
    # where the batch's rows cannot be taken, each prompt alone
    tried, decode_in_worker = [], engine._decode_in_worker
    monkeypatch.setattr(engine, "_decode_in_worker", lambda p, n, c, batch: tried.append(batch) or (
        (None, "no layout") if batch else decode_in_worker(p, n, c, batch)))
    fallback = engine.decode(chosen, steps)
    assert tried == [True, False] and engine.rows_fallback == "" and engine.decode_batches == [1, 1, 1]
    assert [d.scores.logits.tolist() for d in fallback] == [a.scores.logits.tolist() for a in alone]


def test_greedy_generate_is_deterministic_and_matches_last_row(engine, prompts, scores):
    first = engine.generate(prompts, 6)
    second = engine.generate(prompts, 6)
    assert [g.token_ids for g in first] == [g.token_ids for g in second]
    for g, s in zip(first, scores):
        assert len(g.token_ids) == 6 and len(g.logprobs) == 6
        assert all(np.isfinite(g.logprobs)) and max(g.logprobs) <= 0
        assert g.token_ids[0] == s.topk_ids[-1, 0]  # last score row = first generated token's distribution
        assert g.logprobs[0] == pytest.approx(s.topk_logprobs[-1, 0], abs=1e-4)


def test_seeded_sampling_does_not_depend_on_batch(engine, prompts):
    batch = engine.generate(prompts, 5, temperature=1.0, top_p=0.9, seed=7)
    reversed_batch = engine.generate(prompts[::-1], 5, temperature=1.0, top_p=0.9, seed=7)
    assert [g.token_ids for g in batch] == [g.token_ids for g in reversed_batch[::-1]]


def test_too_long_prompt_rejected_before_the_engine(engine):
    with pytest.raises(PortcheckError, match="max_model_len"):
        engine.score([[1] * MAX_MODEL_LEN])
    with pytest.raises(PortcheckError, match="new token"):
        engine.generate([[1] * (MAX_MODEL_LEN - 3)], 8)


def test_adaptation_measured(engine, tiny_model_dir):
    items = engine.adaptation()
    for name, entry in items.items():
        assert set(entry) == {"value", "status", "note"}, name
        assert entry["status"] in ("ok", "failed", "not determined"), name
    types = layer_types(tiny_model_dir)
    assert items["layer_pattern"] == {
        "value": dict(Counter(types)), "status": "ok", "note": items["layer_pattern"]["note"]
    }
    assert items["full_attention_layers"]["value"] == [i for i, t in enumerate(types) if t == "full_attention"]
    assert items["engine_class"]["status"] == "ok"
    assert items["kv_cache_tokens"]["status"] == "ok" and items["kv_cache_tokens"]["value"] >= MAX_MODEL_LEN
    assert items["max_concurrency"]["value"] >= 1
    assert items["weight_load_s"]["status"] == "ok"
    assert items["engine_start_s"]["value"] > 0
    assert items["vllm_ascend"]["value"]["present"] is False  # a cpu host
    assert items["vllm_ascend_patches"]["status"] == "not determined"
    assert items["mtp_loaded"]["value"] is False and items["mtp_loaded"]["status"] == "ok"
    assert items["vision_loaded"]["value"] is False
    if not has_gdn(tiny_model_dir):  # the dense stand-in of a vLLM line that cannot run Qwen3.5
        assert items["engine_class"]["value"]["built_class"].endswith("Qwen3ForCausalLM")
        assert items["gdn_implementation"]["status"] == items["ssm_state_dtype"]["status"] == "not determined"
        assert items["mtp_weights_present"]["value"] is False
        return
    assert items["layer_pattern"]["value"] == {"linear_attention": 6, "full_attention": 2}
    assert items["mtp_weights_present"]["value"] is True and items["mtp_weights_present"]["status"] == "ok"
    assert items["vision_weights_present"]["value"] is True
    assert items["engine_class"]["value"]["built_class"].endswith("Qwen3_5ForConditionalGeneration")
    assert items["gdn_implementation"]["status"] == "ok"
    assert items["gdn_implementation"]["value"]["forward"].endswith("forward_cpu")
    assert items["ssm_state_dtype"]["status"] == "ok" and items["ssm_state_dtype"]["value"]["ssm_state"] == "float32"


def test_peak_memory_carries_vllms_own_split(engine):
    """Issue 8 finding 6, on the real CPU worker: the KV cache vLLM allocated is read from its worker (the GPU
    worker's profiling figures are checked on stand-ins in tests/test_memory_split.py)."""
    peak = engine.peak_memory()
    assert peak["bytes"] > 0 and peak["source"] == "peak RSS of the worker process"
    split = peak["split"]
    assert split["kv_cache_allocated"] > 0
    assert split["kv_cache_allocated"] >= engine.capacity()["kv_cache_tokens"] * 1024  # 1,024 B per token (tiny)
    if split["requested"] and not split["kv_cache_explicit"]:  # the share holds what vLLM allocated (aliases once)
        assert split["kv_cache_allocated"] <= split["requested"]
    # an unset share sizes the KV cache (cpu_memory.kv_cache_bytes); vLLM CPU 0.23 on allocates that
    explicit = engine.llm_kwargs["kv_cache_memory_bytes"]
    assert explicit == cpu_memory.MIN_KV_BYTES
    if engine_args._release(engine.vllm_version) >= (0, 23):
        assert split["kv_cache_explicit"] and split["kv_cache_budget"] == explicit
        assert explicit * 0.9 <= split["kv_cache_allocated"] <= explicit
    else:  # 0.18 reads VLLM_CPU_KVCACHE_SPACE alone: the same size, rounded up to whole GiB, not half the host's RAM
        assert engine.engine_env["VLLM_CPU_KVCACHE_SPACE"] == "1"
        assert split["kv_cache_budget_source"] == "cpu_kvcache_space_bytes" and split["kv_cache_budget"] == 1024**3


# -- destructive: keep these last ------------------------------------------------------------------------------


def test_engine_death_raises_with_log_tail(engine, prompts):
    core = [p for p in engine._children.values() if "EngineCore" in p.name()] or list(engine._children.values())
    assert core, "no engine process found"
    outcome: list[BaseException | None] = []

    def score():  # in a thread, so a hang fails the test instead of stalling the session
        try:
            engine.score(prompts)
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001
            outcome.append(exc)

    os.kill(core[0].pid, signal.SIGKILL)  # no grace: like the OOM killer
    worker = threading.Thread(target=score, daemon=True)
    worker.start()
    worker.join(timeout=120)
    assert outcome, "score() still blocked 120 s after the engine was killed"
    assert isinstance(outcome[0], PortcheckError), repr(outcome[0])
    message = str(outcome[0])
    assert "died" in message and "last 60 lines of the vLLM log" in message


def test_close_leaves_no_processes(engine):
    engine.close()
    engine.close()  # idempotent
    assert process.child_processes() == {}
    with pytest.raises(PortcheckError, match="closed"):
        engine.generate([[1, 2]], 1)


def test_in_process_engine_gives_the_same_rows_and_puts_this_process_back(tiny_model_dir, prompts, rows, tmp_path,
                                                                          monkeypatch):
    """The cpu default: no EngineCore or worker process, the same raw logits rows as the module's engine in its own
    processes, and at close this process as it was: torch.set_num_threads (vLLM's CPU worker replaces it), the CPU
    affinity (it binds), vLLM's classes (the fault plugin and the GDN call counters patched them: a later engine must
    inherit neither)."""
    import torch

    from portcheck.faults import vllm_plugin

    if not engine_args.runs_in_process("cpu", EngineSettings(), preflight.vllm_version()):
        pytest.skip(f"vLLM {preflight.vllm_version()}: the cpu engine runs in its own processes on this line")
    set_num_threads, affinity = torch.set_num_threads, os.sched_getaffinity(0)
    monkeypatch.setenv("PORTCHECK_FAULT", "layer_scale:0")  # patched in, changing nothing
    settings = EngineSettings(max_model_len=MAX_MODEL_LEN, max_num_seqs=8, max_num_batched_tokens=512,
                              logprobs_topk=TOPK, extra={"log_file": str(tmp_path / "engine.log")})
    before = process.child_processes()  # the module's engine may still be open
    with make_engine(parse_target("cpu-vllm-bf16"), tiny_model_dir, settings) as engine:
        assert engine.in_process and engine.llm_kwargs["distributed_executor_backend"] == "uni"
        assert process.started_since(before) == {}
        assert vllm_plugin._ORIGINALS, "the fault plugin did not patch this process"
        in_process_rows = engine.score(prompts)
        assert "job's own process" in engine.peak_memory()["source"]
    for ours, theirs in zip(in_process_rows, rows):
        np.testing.assert_array_equal(ours.logits, theirs.logits)
    assert torch.set_num_threads is set_num_threads and os.sched_getaffinity(0) == affinity
    assert not vllm_plugin._ORIGINALS and vllm_plugin._fault() is None
    from vllm.model_executor.layers.mamba.gdn import qwen_gdn_linear_attn

    forward = qwen_gdn_linear_attn.QwenGatedDeltaNetAttention.forward_cpu
    assert forward.__module__.startswith("vllm.") and not hasattr(forward, "_portcheck_original")


def test_decode_rows_are_the_steps_under_chunked_prefill_and_prefix_cache(tiny_model_dir, prompts, tmp_path):
    """The worker's rows of a sequence decoded alone are its uncached prompt rows, in 16-token chunks, then one per
    later step: the last max_tokens rows are the steps on a second pass whose prompts come from the prefix cache,
    the same distributions as vLLM's own log-probs of the same steps; decoded as one batch (mixed_batch: the
    passes shared), each prompt's rows are its rows alone to bf16 rounding. Its own engine start (the module's
    closed)."""
    settings = EngineSettings(max_model_len=256, max_num_seqs=2, max_num_batched_tokens=16, logprobs_topk=TOPK,
                              extra={"log_file": str(tmp_path / "engine.log"), "vllm_kwargs": {
                                  "enable_prefix_caching": True, "enable_chunked_prefill": True}})
    workload = [list(range(100, 260)) + ids for ids in prompts[:2]]  # a 160-token shared prefix
    try:
        engine = make_engine(parse_target("cpu-vllm-bf16"), tiny_model_dir, settings)
    except PortcheckError as exc:  # vLLM 0.23: prefix caching of a hybrid model takes chunks of a whole block only
        if "Mamba cache align mode" not in str(exc):
            raise
        pytest.skip(f"this vLLM line refuses 16-token chunks with prefix caching: {str(exc).splitlines()[0][-140:]}")
    with engine:
        engine.decode(workload, 8)
        decoded = engine.decode(workload, 8)
        assert engine.rows_fallback == "" and all(engine.cached_tokens), engine.cached_tokens
        block = engine.cache_block_size()  # the unit cached: a hit is whole blocks (modes' not-run reason)
        assert block and all(c % block == 0 for c in engine.cached_tokens), (block, engine.cached_tokens)
        own = engine.decode(workload, 8, together=True)  # vLLM's top-k of the same steps
        # the mode workload's batch (modes.batched): both prompts in one batch, passes of 16 tokens shared
        mixed = engine.decode(workload, 8, mixed_batch=True)
        assert engine.rows_fallback == "" and engine.decode_batches == [2] and all(engine.cached_tokens)
    for d, o, x in zip(decoded, own, mixed):
        assert d.tokens == o.tokens == x.tokens
        mine = np.take_along_axis(log_softmax(d.scores.logits), o.scores.topk_ids, axis=1)
        gap = np.abs(mine - o.scores.topk_logprobs)
        assert (gap <= bf16_steps(d.scores.logits)).all(), (gap.max(axis=1), bf16_steps(d.scores.logits)[:, 0])
        assert (np.abs(x.scores.logits - d.scores.logits) <= bf16_steps(d.scores.logits)).all()  # 0.5 step, measured


def test_unregistered_architecture_is_refused_before_the_engine_starts(tiny_model_dir, tmp_path):
    import json
    import shutil

    foreign = tmp_path / "foreign"
    shutil.copytree(tiny_model_dir, foreign)
    config = json.loads((foreign / "config.json").read_text())
    config["architectures"] = ["NotARealModelForCausalLM"]
    (foreign / "config.json").write_text(json.dumps(config))
    with pytest.raises(PortcheckError, match=r"does not register the checkpoint's architecture \['NotARealModelForCausalLM'\]"):
        make_engine(parse_target("cpu-vllm-bf16"), foreign, EngineSettings(max_model_len=128))


# -- vLLM lines: engine arguments are feature-detected (issue 8 finding 1) --------------------------------------

# vLLM 0.17-0.23 have no EngineArgs.log_config_file (it arrived in the 0.32 line, already deprecated there); their
# vllm.logger reads VLLM_LOGGING_CONFIG_PATH instead.
def older_line_fields():
    return engine_args.engine_fields() - {"log_config_file"}


def test_logging_config_goes_by_engine_argument_or_environment():
    from packaging.version import Version

    # the installed line: the field exists from 0.32 on (the matrix runs this on 0.18, 0.23 and 0.32)
    assert ("log_config_file" in engine_args.engine_fields()) == (Version(preflight.vllm_version()) >= Version("0.32"))
    fields = engine_args.engine_fields() | {"log_config_file"}
    assert logs.logging_route("/x/log.json", fields) == ({"log_config_file": "/x/log.json"}, {})
    assert logs.logging_route("/x/log.json", older_line_fields()) == ({}, {"VLLM_LOGGING_CONFIG_PATH": "/x/log.json"})
    assert logs.logging_route(None, older_line_fields()) == ({}, {})


def test_an_argument_this_vllm_lacks_is_refused_naming_the_version():
    with pytest.raises(PortcheckError, match=r"vLLM 0\.23\.0 has no engine argument\(s\) \['log_config_file'\]"):
        preflight.check_engine_arguments({"model": "m", "log_config_file": "x"}, older_line_fields(), "0.23.0")
    preflight.check_engine_arguments({"model": "m", "log_config_file": "x"}, older_line_fields() | {"log_config_file"},
                                     "0.32.0")


def test_engine_without_log_config_file_starts_and_still_captures_its_log(tiny_model_dir, tmp_path, monkeypatch):
    """The offline engine on an EngineArgs without log_config_file (as in vLLM 0.17-0.23): no TypeError, and the
    log-only figures still come from the log file, through VLLM_LOGGING_CONFIG_PATH."""
    monkeypatch.setattr(vllm_engine, "engine_fields", older_line_fields)
    settings = EngineSettings(max_model_len=MAX_MODEL_LEN, max_num_seqs=2,
                              extra={"log_file": str(tmp_path / "engine.log")})
    with make_engine(parse_target("cpu-vllm-bf16"), tiny_model_dir, settings) as engine:
        assert "log_config_file" not in engine.llm_kwargs
        assert engine.engine_env["VLLM_LOGGING_CONFIG_PATH"].endswith(".logging.json")
        assert len(engine.generate([[1, 2, 3]], 2)[0].token_ids) == 2
        weight_load_s = engine.timings["weight_load_s"]
    # The figure vLLM logged, to its two decimals (a fast host loads the tiny model in "0.00 seconds").
    logged = re.findall(r"Loading weights took ([\d.]+) seconds", (tmp_path / "engine.log").read_text())
    assert logged and weight_load_s == float(logged[-1])


def test_vllm_ascend_records_reach_the_engine_log(tmp_path):
    """Issue 8 finding 8: vllm-ascend logs under vllm_ascend.* (not a child of "vllm") and words its weight figure
    its own way; both must reach the engine log and its figures. Run apart: logging config is process-global."""
    import subprocess
    import sys

    script = (
        "import logging, sys\n"
        "from portcheck.engines.vllm import logs\n"
        "log_path, config = logs.logging_setup({'log_file': sys.argv[1]})\n"
        "logs.apply_logging_config(config)\n"
        "logging.getLogger('vllm_ascend.worker.model_runner_v1').info('Loading model weights took 1.5625 GB')\n"
        "print(logs.logged_figures(logs.read_log(log_path)))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("VLLM_LOGGING_CONFIG_PATH", "VLLM_CONFIGURE_LOGGING")}
    run = subprocess.run([sys.executable, "-c", script, str(tmp_path / "engine.log")], capture_output=True, text=True,
                         env=env, check=True)
    assert "{'model_load_gib': 1.5625}" in run.stdout
    assert "pid=" in (tmp_path / "engine.log").read_text()
