"""Compact per-position storage (issue 10 section 2): the record, its streamed dump, the KLD lower bound and estimate
against hand-computed and exact values, a fault only the estimate sees, the storage setting, and the real dump
code writing compact corpus and decode dumps that the comparisons read."""

from __future__ import annotations

import math

import numpy as np
import pytest
import yaml

from conftest import ROOT
from portcheck.compare import compact as c
from portcheck.compare import metrics as m
from portcheck.compare.compare import compare_dumps
from portcheck.compare.positions import compare_by_position, compare_corpus_files
from portcheck.dump.compact import Storage, bytes_per_position, reduce_logprobs, sample_ids
from portcheck.dump.logits_file import DumpWriter, read_dump, read_dump_meta, write_dump
from portcheck.engines.outputs import PromptScores
from portcheck.errors import PortcheckError

THRESHOLDS = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())["compare"]["thresholds"]
CHUNKS = {"bucket": 64, "growth_max": 2.0, "growth_floor": 1e-6}
META = {"model_sha": "m", "tokenizer_sha": "t", "prompts_sha": "p"}


def logprobs(probabilities) -> np.ndarray:
    return np.log(np.asarray([probabilities], dtype=np.float64))


def exact_kld(p, q) -> float:
    return float(sum(a * math.log(a / b) for a, b in zip(p, q)))


# ---------------------------------------------------------------- the KLD of two records, by hand


def test_lower_bound_merges_the_unshared_ids_into_one_bin():
    p, q = [0.5, 0.3, 0.15, 0.05], [0.4, 0.4, 0.1, 0.1]
    ref, tgt = reduce_logprobs(logprobs(p), 2, None), reduce_logprobs(logprobs(q), 2, None)
    lower, estimate = c.kld_compact(ref, tgt)
    # Ids 0 and 1 are in both top-2 lists; ids 2 and 3 form the bin (0.2 against 0.2).
    by_hand = 0.5 * math.log(0.5 / 0.4) + 0.3 * math.log(0.3 / 0.4) + 0.2 * math.log(0.2 / 0.2)
    assert lower[0] == pytest.approx(by_hand, rel=1e-12)
    assert lower[0] < exact_kld(p, q) and estimate is None and c.kld_basis(ref, tgt) == "lower bound"


def test_unshared_top_ids_join_the_bin():
    p, q = [0.6, 0.3, 0.1], [0.6, 0.1, 0.3]  # top-2: ref {0, 1}, target {0, 2}: only id 0 is shared
    lower, _ = c.kld_compact(reduce_logprobs(logprobs(p), 2, None), reduce_logprobs(logprobs(q), 2, None))
    assert lower[0] == pytest.approx(0.6 * math.log(1.0) + 0.4 * math.log(0.4 / 0.4), abs=1e-12)


def test_estimate_is_exact_when_the_sample_covers_the_vocabulary():
    # Self-normalised over the whole bin, sum p (d + e^-d - 1) / p_rest = KL(P_rest || Q_rest) exactly.
    p, q = [0.5, 0.3, 0.15, 0.05], [0.4, 0.4, 0.1, 0.1]
    every_id = sample_ids(4, 4)
    ref, tgt = (reduce_logprobs(logprobs(x), 2, every_id) for x in (p, q))
    lower, estimate = c.kld_compact(ref, tgt)
    assert estimate[0] == pytest.approx(exact_kld(p, q), rel=1e-12) and estimate[0] > lower[0]


def peaked_rows(rng, rows: int, vocab: int, spread: float = 3.0) -> np.ndarray:
    return m.log_softmax(rng.standard_normal((rows, vocab)) * spread)


def test_bound_never_exceeds_and_estimate_tracks_the_exact_kld():
    rng = np.random.default_rng(1)
    ref = peaked_rows(rng, 200, 20000)
    tgt = m.log_softmax(ref + 0.05 * rng.standard_normal(ref.shape))  # bf16-level logit noise
    sample = sample_ids(20000, 128)
    lower, estimate = c.kld_compact(reduce_logprobs(ref, 256, sample), reduce_logprobs(tgt, 256, sample))
    exact = m.kld_rows(ref, tgt)
    assert np.all(lower <= exact + 1e-12) and np.all(estimate >= lower)
    assert lower.mean() < 0.8 * exact.mean()  # the tail carries a fifth of the divergence here
    assert estimate.mean() == pytest.approx(exact.mean(), rel=0.05)


def test_a_fault_in_the_tail_is_seen_by_the_estimate_not_the_bound():
    # Injected fault: noise on every id outside the 256 most likely (a kernel that spoils small logits).
    rng = np.random.default_rng(2)
    ref = peaked_rows(rng, 100, 20000, spread=1.0)
    ranks = np.argsort(np.argsort(-ref, axis=1), axis=1)
    tgt = m.log_softmax(ref + np.where(ranks >= 256, 0.5 * rng.standard_normal(ref.shape), 0.0))
    sample = sample_ids(20000, 128)
    lower, estimate = c.kld_compact(reduce_logprobs(ref, 256, sample), reduce_logprobs(tgt, 256, sample))
    exact = m.kld_rows(ref, tgt)
    assert lower.mean() < 0.2 * exact.mean()
    assert estimate.mean() == pytest.approx(exact.mean(), rel=0.1)


def test_top1_ties_come_from_the_reference_record():
    ref = reduce_logprobs(logprobs([0.40, 0.39, 0.21]), 3, None)
    tgt = reduce_logprobs(logprobs([0.39, 0.40, 0.21]), 3, None)
    agree, tie = c.top1_and_tie(ref, tgt, tie_tolerance=0.04)
    assert (agree[0], tie[0]) == (False, True)
    agree, tie = c.top1_and_tie(ref, tgt, tie_tolerance=0.01)
    assert (agree[0], tie[0]) == (False, False)


# ---------------------------------------------------------------- the dump


def scores(rng, lengths, vocab):
    return [PromptScores(input_ids=rng.integers(0, vocab, n), logits=rng.standard_normal((n, vocab)).astype(np.float32))
            for n in lengths]


def test_compact_dump_size_and_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    rows = scores(rng, (40, 60), 5000)
    path = tmp_path / "compact.safetensors"
    write_dump(path, rows, None, {**META, "target": "cpu-hf-bf16"}, Storage(compact=True, topk=256, sample=128))
    dump = read_dump(path)
    assert (dump.kind, dump.width, len(dump.sample_ids)) == ("compact", 256, 128)
    per_position = path.stat().st_size / 100
    assert bytes_per_position(256, 128) == 2568
    # + 8 bytes of input id, plus the header and the sample ids shared by the file
    assert 2568 + 8 <= per_position < 2568 + 8 + 40
    record = c.records(dump, 1, 256, dump.sample_ids)
    expected = reduce_logprobs(m.log_softmax(rows[1].logits), 256, dump.sample_ids)
    np.testing.assert_array_equal(record.topk_ids, expected.topk_ids)
    np.testing.assert_allclose(record.rest_logmass, expected.rest_logmass, rtol=1e-6)
    np.testing.assert_allclose(dump.token_logprobs[1][:-1],
                               m.next_token_logprobs(m.log_softmax(rows[1].logits), rows[1].input_ids[1:]), rtol=1e-6)


def test_an_unfinished_stream_writes_nothing(tmp_path):
    path = tmp_path / "corpus.safetensors"
    writer = DumpWriter(path, Storage(compact=True))
    writer.add(scores(np.random.default_rng(0), (5,), 300)[0])
    del writer  # the engine died before close(): no file, not a truncated one
    assert not path.exists() and not list(tmp_path.iterdir())
    with pytest.raises(PortcheckError, match="no prompt scores"):
        DumpWriter(path).close({**META, "target": "cpu-hf-bf16"})
    assert not path.exists()


def test_compact_and_whole_dumps_compare_to_the_same_kld(tmp_path):
    rng = np.random.default_rng(3)
    ref_rows = scores(rng, (70, 70), 20000)
    tgt_rows = [PromptScores(s.input_ids, s.logits + rng.normal(0, 0.05, s.logits.shape).astype(np.float32))
                for s in ref_rows]
    dumps = {}
    for name, rows, target in (("ref", ref_rows, "cpu-hf-fp32"), ("tgt", tgt_rows, "cpu-hf-bf16")):
        for storage in ("full", "compact"):
            path = tmp_path / f"{name}.{storage}.safetensors"
            write_dump(path, rows, None, {**META, "target": target}, Storage(compact=storage == "compact"))
            dumps[name, storage] = read_dump(path)
    exact = compare_dumps(dumps["ref", "full"], dumps["tgt", "full"], THRESHOLDS, 0.04)
    for ref_kind, tgt_kind in (("compact", "compact"), ("full", "compact"), ("compact", "full")):
        result = compare_dumps(dumps["ref", ref_kind], dumps["tgt", tgt_kind], THRESHOLDS, 0.04)
        assert result["kld_basis"] == "estimate" and result["cosine_min"] is None  # no msprobe tensor metrics
        assert result["kld_mean"] == pytest.approx(exact["kld_mean"], rel=0.05)
        assert result["kld_mean_lower_bound"] < exact["kld_mean"]
        assert result["top1_agreement"] == exact["top1_agreement"]
        assert result["rms_delta_p"] == pytest.approx(exact["rms_delta_p"], rel=1e-5)
    positions = compare_by_position(dumps["ref", "compact"], dumps["tgt", "compact"], THRESHOLDS, 0.04, CHUNKS)
    assert positions["kld_basis"] == "estimate" and positions["buckets"][1]["kld_basis"] == "estimate"


# ---------------------------------------------------------------- the setting


def test_storage_setting():
    assert Storage.from_config({"storage": "auto", "full_max_vocab": 32768}, 2048).compact is False
    assert Storage.from_config({"storage": "auto", "full_max_vocab": 32768}, 248320).compact is True
    assert Storage.from_config({"storage": "full"}, 248320).compact is False
    assert Storage.from_config({"storage": "compact", "compact_topk": 64, "compact_sample": 0}, 2048) == \
        Storage(True, 64, 0)
    with pytest.raises(PortcheckError, match="logits.storage is 'small'; use one of auto, full, compact"):
        Storage.from_config({"storage": "small"}, 2048)


# ---------------------------------------------------------------- the real dump code


def test_run_target_streams_compact_corpus_and_decode_dumps(tiny_model_dir, tmp_path):
    """run_target on the hf engine with compact storage forced: the corpus and decode dumps are compact, the seed
    prompts' dump keeps whole rows, and the comparisons against a whole-row reference estimate the same KLD."""
    from portcheck.config import DEFAULT_CORPUS, read_corpus_text
    from portcheck.dump.corpus import corpus_job
    from portcheck.dump.decode_reference import score_decode
    from portcheck.dump.run import run_target
    from portcheck.engines.settings import EngineSettings

    text = read_corpus_text(DEFAULT_CORPUS)
    corpus = corpus_job(DEFAULT_CORPUS, {"window_length": 150, "windows": 2}, text)
    runs = {}
    for target, storage in (("cpu-hf-fp32", "full"), ("cpu-hf-bf16", "compact")):
        paths = {kind: tmp_path / target / f"{kind}.{'json' if kind == 'adaptation' else 'safetensors'}"
                 for kind in ("logits", "adaptation", "corpus", "decode")}
        run_target(target, tiny_model_dir, ["The capital of France is"], EngineSettings(threads=1), paths,
                   greedy_tokens=2, corpus=corpus, decode={"prompts": 1, "max_tokens": 16},
                   storage={"storage": storage, "compact_topk": 128, "compact_sample": 128})
        runs[target] = paths
    target = runs["cpu-hf-bf16"]
    assert [read_dump(target[k]).kind for k in ("logits", "corpus", "decode")] == ["full", "compact", "compact"]
    # where the engine session went, stage by stage, in the seed prompts' dump (make bench-real-shape prints it)
    meta = read_dump_meta(target["logits"])
    stages = dict(meta["stage_seconds"])
    assert list(stages) == ["engine_start", "prompts", "greedy", "corpus", "decode"]
    assert all(seconds > 0 for seconds in stages.values()) and sum(stages.values()) <= meta["run_seconds"]
    assert [read_dump_meta(target[k])["run_seconds"] for k in ("corpus", "decode")] == [stages["corpus"],
                                                                                       stages["decode"]]
    result = compare_corpus_files(runs["cpu-hf-fp32"]["corpus"], target["corpus"], THRESHOLDS, 0.04, CHUNKS, 0)
    assert result["kld_basis"] == "estimate" and result["storage"]["target"] == "compact"
    assert result["storage"]["target_bytes"] < result["storage"]["reference_bytes"] / 4
    # The pooled figures pass; growth over 2 windows may be too few units to decide (1.3x, bounds 0.35x-4.8x).
    assert result["overall"]["kld_mean"] > 0 and result["pooled"]["status"] == "pass"
    assert result["verdict"]["status"] != "fail" and not result["verdict"]["reasons"], result["verdict"]
    decode_reference = tmp_path / "decode_reference.safetensors"
    score_decode("cpu-hf-fp32", tiny_model_dir, EngineSettings(threads=1), target["decode"], decode_reference,
                 {"storage": "compact", "compact_topk": 128, "compact_sample": 128})
    assert read_dump(decode_reference).kind == "compact"
    decode = compare_by_position(read_dump(decode_reference), read_dump(target["decode"]), THRESHOLDS, 0.04, CHUNKS)
    assert decode["kld_basis"] == "estimate" and decode["overall"]["n_positions"] == 16


class _TopkOnlyEngine:
    """An engine whose worker cannot make compact records (as vLLM in graph mode): the dump keeps its top-k."""

    vocab_size = 300
    settings = type("Settings", (), {"logprobs_topk": 4})()

    def score_compact(self, prompts, topk, sample):
        return None, "graph mode (enforce_eager off): the final-norm hook would not run"

    def score(self, prompts):
        ids = np.asarray(prompts[0])
        return [PromptScores(ids, topk_ids=np.tile(np.arange(4), (len(ids), 1)),
                             topk_logprobs=np.full((len(ids), 4), -2.0, np.float32),
                             token_logprobs=np.full(len(ids), -2.0, np.float32))]


def test_an_engine_that_cannot_make_compact_records_keeps_its_topk_and_says_why(tmp_path):
    from portcheck.dump.run import score_windows

    path = tmp_path / "corpus.safetensors"
    writer = score_windows(_TopkOnlyEngine(), [[1, 2, 3], [4, 5]], path, Storage(compact=True))
    writer.close({**META, "target": "cpu-vllm-bf16"})
    dump = read_dump(path)
    assert dump.kind == "topk" and "graph mode" in dump.meta["compact_fallback"]


@pytest.mark.vllm
def test_vllm_makes_compact_records_in_its_worker(tiny_model_dir, tmp_path):
    """vLLM gives the driver top-k log-probs only; its worker reduces every whole row to the compact record. The
    records agree with vLLM's own full-vocabulary log-probs, and against the hf fp32 reference they estimate the
    KLD that vLLM's full rows give exactly."""
    from portcheck.config import DEFAULT_CORPUS, read_corpus_text
    from portcheck.dump.corpus import cut_windows
    from portcheck.dump.run import load_tokenizer
    from portcheck.engines.factory import make_engine
    from portcheck.engines.settings import EngineSettings
    from portcheck.targets import parse_target

    tokenizer = load_tokenizer(tiny_model_dir)
    windows = cut_windows(tokenizer(read_corpus_text(DEFAULT_CORPUS))["input_ids"], 200, 2)
    settings = EngineSettings(max_model_len=512, logprobs_topk=-1, extra={"log_file": str(tmp_path / "engine.log")})
    with make_engine(parse_target("cpu-vllm-bf16"), tiny_model_dir, settings) as engine:
        # vLLM's own log-probs of the whole vocabulary, a window at a time as the worker's records are made
        full = [engine.score([window])[0] for window in windows]
        sample = sample_ids(engine.vocab_size, 128)
        records, reason = engine.score_compact(windows, 64, sample)
    with make_engine(parse_target("cpu-hf-fp32"), tiny_model_dir, EngineSettings(threads=1)) as reference:
        reference_rows = reference.score(windows)
    assert reason == "" and len(records) == 2
    for whole, record in zip(full, records):
        rows = m.log_softmax(whole.logits)
        expected = reduce_logprobs(rows, 64, sample)
        # the same top-1, or one the full row ties with it (bf16 logits make exact ties)
        at_record_top1 = rows[np.arange(len(rows)), record.topk_ids[:, 0]]
        np.testing.assert_allclose(at_record_top1, rows.max(axis=1), atol=1e-6)
        np.testing.assert_allclose(record.topk_logprobs[:, :5], expected.topk_logprobs[:, :5], atol=1e-4)
        np.testing.assert_allclose(record.sample_logprobs, expected.sample_logprobs, atol=1e-4)
        np.testing.assert_allclose(record.token_logprobs[:-1], whole.token_logprobs[:-1], atol=1e-4)
    paths = {name: tmp_path / f"{name}.safetensors" for name in ("ref", "full", "compact")}
    write_dump(paths["ref"], reference_rows, None, {**META, "target": "cpu-hf-fp32"})
    write_dump(paths["full"], full, None, {**META, "target": "cpu-vllm-bf16"})
    writer = DumpWriter(paths["compact"], Storage(compact=True, topk=64))
    writer.sample = sample
    for record in records:
        writer.add(record)
    writer.close({**META, "target": "cpu-vllm-bf16"})
    exact = compare_dumps(read_dump(paths["ref"]), read_dump(paths["full"]), THRESHOLDS, 0.04)
    estimated = compare_dumps(read_dump(paths["ref"]), read_dump(paths["compact"]), THRESHOLDS, 0.04)
    assert estimated["kld_basis"] == "estimate" and exact["kld_basis"] == "exact"
    assert estimated["kld_mean"] == pytest.approx(exact["kld_mean"], rel=0.05)
