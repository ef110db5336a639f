"""The far-context measurement (issue 18 section 1, the report's model section): the reference's next-token loss
with the whole window against the last 64 tokens, checked against hand-computed losses."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from portcheck.engines.base import Engine
from portcheck.engines.outputs import PromptScores
from portcheck.model.context import FAR_REPEATS, context_dependence

VOCAB = 8


class RemembersEverything:
    """Certain of the next token (p = 0.9) when it sees more than 64 tokens; uniform over 8 ids with 64 or fewer."""

    def score(self, prompts):
        out = []
        for ids in prompts:
            if len(ids) > 64:
                logits = np.full((len(ids), VOCAB), 0.0)
                nxt = [*ids[1:], 0]
                logits[np.arange(len(ids)), nxt] = math.log(0.9 * (VOCAB - 1) / 0.1)  # p(next) = 0.9
            else:
                logits = np.zeros((len(ids), VOCAB))
            out.append(PromptScores(np.asarray(ids), logits.astype(np.float32)))
        return out

    last_logits = Engine.last_logits  # the engines' default: each prompt scored, its last row


def test_the_rise_is_the_loss_lost_with_the_far_context():
    # the third window's next token is always 0, the uniform row's first (argmax) id: its top-1 does not change
    windows = [[(i * 3) % VOCAB for i in range(129)], [(i * 5) % VOCAB for i in range(129)], [0] * 129]
    result = context_dependence(RemembersEverything(), windows, context=64, stride=16)
    # positions 64, 80, 96, 112 of each window (each < 128, the last row with a next token)
    assert result["positions"] == 12 and result["windows"] == 3
    assert result["loss_full"] == pytest.approx(-math.log(0.9), rel=1e-5)
    assert result["loss_cut"] == pytest.approx(math.log(VOCAB), rel=1e-6)
    assert result["rise"] == pytest.approx(math.log(VOCAB) + math.log(0.9), rel=1e-5)
    assert result["rise_by_window"] == pytest.approx([result["rise"]] * 3, rel=1e-6)
    # KL(whole || uniform over 8) with p(next) = 0.9 and 0.1 / 7 on each other id
    kld = 0.9 * math.log(0.9 * VOCAB) + 0.1 * math.log(0.1 / 7 * VOCAB)
    assert result["kld_whole_cut_mean"] == pytest.approx(kld, rel=1e-5)
    assert result["top1_changed_rate"] == pytest.approx(8 / 12)


def test_far_repeats_are_the_positions_only_the_far_context_can_predict():
    """The stretch 5 6 5 6 7 opens the window, is absent for 95 tokens, then returns: p = 103 (after 5 6 5 6, next
    token 7) is the one position that continues 4+ tokens of a stretch held only beyond the last 64 (5 and 6 recur
    within 64 tokens; every other token is among 0-4, always near). The longest matches are taken first."""
    from portcheck.model.context import far_repeat_positions

    window = [5, 6, 5, 6, 7, *[i % 5 for i in range(95)], 5, 6, 5, 6, 7, *[i % 5 for i in range(40)]]
    assert far_repeat_positions(window, 64, 12) == [103]
    stretch = [20, 21, 22, 23, 24]
    twice = [9, *stretch, *range(30, 100), *stretch, *range(100, 170), 9, *stretch]  # 9 20 21 22 23: 4 tokens, then 5
    assert far_repeat_positions(twice, 64, 12) == [79, 154, 155]
    assert far_repeat_positions(twice, 64, 1) == [155]  # capped: the longest match
    assert far_repeat_positions(twice, 64, 12, min_match=5) == [155]
    assert far_repeat_positions([1, *range(10, 80), 1, *range(100, 170), 1], 64, 12) == []  # 1 follows 79, then 169
    result = context_dependence(RemembersEverything(), [window], context=64, stride=16)
    far = result["far_repeats"]
    assert far["positions"] == 1 and far["per_window_max"] == FAR_REPEATS
    assert far["loss_full"] == pytest.approx(-math.log(0.9), rel=1e-5)
    assert far["loss_cut"] == pytest.approx(math.log(VOCAB), rel=1e-6) and far["top1_changed_rate"] == 1.0
    assert result["positions"] == 5  # the strided sample (64, 80, ..., 128) stays as it was
    none = context_dependence(RemembersEverything(), [[i % 7 for i in range(129)]], context=64)
    assert none["far_repeats"] == {"status": "not run",
                                   "reason": "no window repeats a stretch from beyond its last 64"}


def test_windows_no_longer_than_the_context_are_not_run_and_say_so():
    result = context_dependence(RemembersEverything(), [[1, 2, 3]], context=64)
    assert result == {"status": "not run", "reason": "no window is longer than 65 tokens"}


def test_the_model_table_states_the_cut_as_a_multiple_of_the_bf16_floor(tmp_path):
    from portcheck.report.load import TargetData
    from portcheck.report.sections.model import context_table
    from portcheck.targets import FLOOR_TARGET

    path = tmp_path / "context.json"
    path.write_text(json.dumps({"status": "ok", "reference": "cpu-hf-fp32", "context_tokens": 64, "stride": 16,
                                "positions": 96, "windows": 8, "loss_full": 6.28, "loss_cut": 6.289, "rise": 0.009,
                                "kld_whole_cut_mean": 0.02, "top1_changed_rate": 0.125}))
    floor = TargetData(FLOOR_TARGET, "target", corpus_compare={"overall": {"kld_mean": 4e-5}},
                       paths={"corpus_compare": "results/m/compare/cpu-hf-bf16.corpus.json"})
    rows = {row[0]: row for row in context_table(str(path), floor)["rows"]}
    assert rows["KL(whole ‖ cut), mean"][1] == "0.02 nats" and "500x the bf16 floor" in rows["KL(whole ‖ cut), mean"][2]
    assert rows["top-1 changed by the cut"][1] == "12.5%"
    # an artifact written before the KLD was measured: unknown, never a figure
    path.write_text(json.dumps({"status": "ok", "reference": "cpu-hf-fp32", "context_tokens": 64, "stride": 16,
                                "positions": 96, "windows": 8, "loss_full": 6.28, "loss_cut": 6.289, "rise": 0.009}))
    rows = {row[0]: row for row in context_table(str(path), None)["rows"]}
    assert rows["KL(whole ‖ cut), mean"][1] == "unknown" and "floor" not in rows["KL(whole ‖ cut), mean"][2]


def test_the_hf_reference_scores_the_cuts_batched_as_each_alone(tiny_model_dir):
    """hf's last_logits: cuts of one length batched, the vocabulary projection on the last position only; each row
    what scoring the cut alone gives, to fp32 rounding (prompts of mixed lengths go one by one, exactly). The decoder
    stack gives the same hidden states bit for bit either way; the projection onto the vocabulary is a matrix product
    whose kernel the BLAS picks by the number of rows: bit for bit on the host that first measured it, up to 1.4e-6
    on an AMX host where a projection of a few rows rounds differently (measured, logits ~3 in size)."""
    from portcheck.engines.factory import make_engine
    from portcheck.engines.settings import EngineSettings
    from portcheck.targets import parse_target

    cuts = [list(range(100 + i, 164 + i)) for i in range(20)]  # 20 x 64 tokens: two forwards of 16 and 4
    mixed = [cuts[0], cuts[1][:40]]
    with make_engine(parse_target("cpu-hf-fp32"), tiny_model_dir, EngineSettings(max_model_len=256)) as engine:
        batched, mixed_rows = engine.last_logits(cuts), engine.last_logits(mixed)
        alone = np.stack([scores.logits[-1] for scores in engine.score(cuts)])
        mixed_alone = np.stack([scores.logits[-1] for scores in engine.score(mixed)])
    assert batched.shape == alone.shape and batched.dtype == np.float32
    np.testing.assert_allclose(batched, alone, rtol=0, atol=1e-5)  # the same numbers to fp32 rounding
    np.testing.assert_array_equal(mixed_rows, mixed_alone)
    assert not np.allclose(batched[0], batched[1], atol=1e-3)  # rows are each cut's own
