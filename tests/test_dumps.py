import json

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

from portcheck.dump.logits_file import FORMAT_NAME, check_comparable, read_dump, write_dump
from portcheck.engines.outputs import Generation, PromptScores
from portcheck.errors import PortcheckError
from portcheck.hashing import sha256_file, sha256_json, sha256_text

META = {"target": "cpu-hf-fp32", "model_sha": "m1", "tokenizer_sha": "t1", "prompts_sha": "p1"}
VOCAB = 11


def full_scores(seed=0, lengths=(4, 6)):
    rng = np.random.default_rng(seed)
    return [
        PromptScores(
            input_ids=rng.integers(0, VOCAB, n).astype(np.int32),  # int32 in, int64 out
            logits=rng.normal(size=(n, VOCAB)).astype(np.float32),
        )
        for n in lengths
    ]


def topk_scores(k=3):
    scores = []
    for s in full_scores():
        lp = s.logits - np.log(np.exp(s.logits).sum(axis=1, keepdims=True))
        ids = np.argsort(-lp, axis=1)[:, :k]
        token_lp = np.append(lp[np.arange(len(lp) - 1), s.input_ids[1:]], np.nan)
        scores.append(PromptScores(s.input_ids, None, ids, np.take_along_axis(lp, ids, axis=1), token_lp))
    return scores


@pytest.fixture
def full_dump(tmp_path):
    path = tmp_path / "ref.safetensors"
    greedy = [Generation([1, 2, 3], [-0.1, -0.2, -0.3]), Generation([4])]
    meta = {**META, "versions": {"torch": "2.13"}, "prompts": ["a", "b"], "gdn_impl": "torch"}
    write_dump(path, full_scores(), greedy, meta)
    return path


def rewrite(src, dst, drop=(), replace=None, metadata=None):
    """copy a dump's tensors to a new safetensors file, with changes"""
    with safe_open(src, framework="np") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys() if k not in drop}
        header = f.metadata() if metadata is None else metadata
    tensors.update(replace or {})
    save_file(tensors, str(dst), metadata=header)
    return dst


def test_full_dump_round_trip(full_dump):
    dump = read_dump(full_dump)
    original = full_scores()
    assert dump.kind == "full" and dump.num_prompts == 2 and dump.width == VOCAB
    for i, s in enumerate(original):
        assert dump.input_ids[i].dtype == np.int64 and dump.input_ids[i].tolist() == s.input_ids.tolist()
        assert dump.logits[i].dtype == np.float32 and np.array_equal(dump.logits[i], s.logits)
    assert dump.greedy_ids[0].tolist() == [1, 2, 3] and dump.greedy_ids[1].tolist() == [4]
    assert dump.greedy_logprobs[0] == pytest.approx([-0.1, -0.2, -0.3]) and dump.greedy_logprobs[1] is None
    assert dump.meta["versions"] == {"torch": "2.13"} and dump.meta["prompts"] == ["a", "b"]
    assert dump.meta["gdn_impl"] == "torch" and dump.meta["num_prompts"] == 2
    assert (dump.meta["device"], dump.meta["engine"], dump.meta["dtype"]) == ("cpu", "hf", "fp32")
    assert dump.meta["format"] == FORMAT_NAME and dump.meta["format_version"] == "1"


def test_topk_dump_round_trip(tmp_path):
    path = tmp_path / "tgt.safetensors"
    write_dump(path, topk_scores(), None, {**META, "target": "cpu-vllm-bf16"})
    dump = read_dump(path)
    original = topk_scores()
    assert dump.kind == "topk" and dump.width == 3 and dump.greedy_ids is None and dump.logits is None
    for i, s in enumerate(original):
        assert np.array_equal(dump.topk_ids[i], s.topk_ids)
        assert np.array_equal(dump.topk_logprobs[i], s.topk_logprobs.astype(np.float32))
        assert np.isnan(dump.token_logprobs[i][-1])
        assert dump.token_logprobs[i][:-1] == pytest.approx(s.token_logprobs[:-1])


def test_truncated_file_is_refused_with_the_fix(full_dump):
    data = full_dump.read_bytes()
    for cut in (len(data) - 7, 40, 3):
        full_dump.write_bytes(data[:cut])
        with pytest.raises(PortcheckError, match="truncated or not a safetensors file.*rerun the dump rule") as err:
            read_dump(full_dump)
        assert str(full_dump) in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(PortcheckError, match="does not exist"):
        read_dump(tmp_path / "absent.safetensors")


def test_foreign_safetensors_is_refused(tmp_path):
    plain = tmp_path / "plain.safetensors"
    save_file({"input_ids.0": np.arange(3, dtype=np.int64)}, str(plain))
    with pytest.raises(PortcheckError, match="not a portcheck logit dump"):
        read_dump(plain)
    other = tmp_path / "other.safetensors"
    save_file({"w": np.zeros(2, np.float32)}, str(other), metadata={"format": "pt"})
    with pytest.raises(PortcheckError, match="format='pt'"):
        read_dump(other)


def test_other_format_version_is_refused(full_dump, tmp_path):
    with safe_open(full_dump, framework="np") as f:
        header = {**f.metadata(), "format_version": "2"}
    with pytest.raises(PortcheckError, match="version '2'"):
        read_dump(rewrite(full_dump, tmp_path / "v2.safetensors", metadata=header))


def test_missing_tensor_is_named(full_dump, tmp_path):
    with pytest.raises(PortcheckError, match="'logits.1' is missing"):
        read_dump(rewrite(full_dump, tmp_path / "x.safetensors", drop=["logits.1"]))


def test_row_count_mismatch_is_refused(full_dump, tmp_path):
    short = {"logits.0": np.zeros((3, VOCAB), np.float32)}  # prompt 0 has 4 tokens
    with pytest.raises(PortcheckError, match="logits.0 has 3 rows but prompt 0 has 4 tokens"):
        read_dump(rewrite(full_dump, tmp_path / "x.safetensors", replace=short))


def test_wrong_dtype_is_refused(full_dump, tmp_path):
    floats = {"input_ids.1": np.zeros(6, np.float32)}
    with pytest.raises(PortcheckError, match="'input_ids.1' is F32.*expected I64"):
        read_dump(rewrite(full_dump, tmp_path / "x.safetensors", replace=floats))


def test_write_refuses_inconsistent_scores_and_leaves_no_file(tmp_path):
    path = tmp_path / "bad.safetensors"
    bad = [PromptScores(np.arange(4), np.zeros((5, VOCAB), np.float32))]
    with pytest.raises(PortcheckError, match="5 rows but prompt 0 has 4 tokens"):
        write_dump(path, bad, None, META)
    with pytest.raises(PortcheckError, match="lacks.*model_sha"):
        write_dump(path, full_scores(), None, {"target": "cpu-hf-fp32"})
    with pytest.raises(PortcheckError, match="set by the dump format"):
        write_dump(path, full_scores(), None, {**META, "kind": "full"})
    assert list(tmp_path.iterdir()) == []


def test_comparable_dumps_pass(full_dump, tmp_path):
    other = tmp_path / "tgt.safetensors"
    write_dump(other, full_scores(seed=0), None, {**META, "target": "npu-vllm-bf16"})
    check_comparable(read_dump(full_dump), read_dump(other))


def test_model_sha_difference_is_named(full_dump, tmp_path):
    other = tmp_path / "tgt.safetensors"
    write_dump(other, full_scores(), None, {**META, "target": "npu-vllm-bf16", "model_sha": "m2"})
    with pytest.raises(PortcheckError, match=r"model_sha differs \(reference 'm1', target 'm2'\)"):
        check_comparable(read_dump(full_dump), read_dump(other))


def test_prompt_difference_names_prompt_and_position(full_dump, tmp_path):
    scores = full_scores()
    scores[1].input_ids = scores[1].input_ids.copy()
    scores[1].input_ids[2] += 1
    other = tmp_path / "tgt.safetensors"
    write_dump(other, scores, None, {**META, "target": "npu-vllm-bf16", "prompts_sha": "p2"})
    with pytest.raises(PortcheckError) as err:
        check_comparable(read_dump(full_dump), read_dump(other))
    assert "prompts_sha differs" in str(err.value)
    assert "prompt 1 input_ids differ first at position 2" in str(err.value)
    assert "prompt 0" not in str(err.value)


def test_prompt_count_difference(full_dump, tmp_path):
    other = tmp_path / "tgt.safetensors"
    write_dump(other, full_scores(lengths=(4,)), None, {**META, "target": "npu-vllm-bf16"})
    with pytest.raises(PortcheckError, match=r"number of prompts differs \(reference 2, target 1\)"):
        check_comparable(read_dump(full_dump), read_dump(other))


def test_hashing(tmp_path):
    # sha256("abc") from FIPS 180-2
    assert sha256_text("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    path = tmp_path / "f.txt"
    path.write_text("abc")
    assert sha256_file(path) == sha256_text("abc")
    assert sha256_json({"a": 1, "b": [2]}) == sha256_json(json.loads('{"b": [2], "a": 1}'))
    assert sha256_json({"a": 1}) != sha256_json({"a": 2})


class _RowsEngine:
    """An engine whose decode makes compact records itself (as vLLM's worker does), or, where its worker cannot
    hook, keeps top-k log-probs and says why: what decode_rows and the decode dump's metadata see."""

    vocab_size = VOCAB
    full_values = "logits"
    rows_fallback = ""

    def __init__(self, hooks: bool):
        self.hooks = hooks

    def decode(self, prompts, max_new_tokens, together=False, compact=None, alone=False, mixed_batch=False):
        from portcheck.dump.compact import compact_scores, Storage
        from portcheck.engines.outputs import DecodeScores, decode_row_ids

        self.rows_fallback = "" if self.hooks else "graph mode (enforce_eager off): the final-norm hook would not run"
        self.decode_batches = [len(prompts)]
        decoded = []
        for ids, whole in zip(prompts, full_scores(lengths=[max_new_tokens] * len(prompts))):
            tokens = whole.logits.argmax(axis=1).tolist()
            whole.input_ids = np.asarray(decode_row_ids(ids, tokens))
            topk, sample = compact
            rows = (compact_scores(whole, Storage(True, topk, len(sample)), np.asarray(sample)) if self.hooks
                    else topk_scores()[0])
            decoded.append(DecodeScores(list(ids), tokens, rows))
        return decoded


@pytest.mark.parametrize("hooks, kind", [(True, "compact"), (False, "topk")])
def test_decode_dump_says_where_its_rows_came_from(tmp_path, hooks, kind):
    """Compact records made by the engine keep the dump's shared sample ids (the KLD is an estimate); rows the
    worker could not make are the engine's top-k, and the dump names the reason (the KLD is a lower bound)."""
    from portcheck.dump.compact import Storage, sample_ids
    from portcheck.dump.run import decode_rows, write_decode_dump

    storage = Storage(compact=True, topk=3, sample=4)
    rows = decode_rows(_RowsEngine(hooks), [[1, 2], [3]], 4, storage)
    write_decode_dump(tmp_path / "decode.safetensors", rows, {**META, "target": "cpu-vllm-bf16"}, 4, storage)
    dump = read_dump(tmp_path / "decode.safetensors")
    assert dump.kind == kind and dump.meta["decode"]["batches"] == [2] and "batches" not in dump.meta
    if hooks:
        assert "rows_fallback" not in dump.meta and dump.meta["full_values"] == "logits"
        np.testing.assert_array_equal(dump.sample_ids, sample_ids(VOCAB, 4))
    else:
        assert dump.meta["rows_fallback"].startswith("graph mode") and dump.sample_ids is None
