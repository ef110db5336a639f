"""The far-context measurement (issue 18 section 1, the report's model section): the reference's next-token loss
with the whole window against the last 64 tokens, checked against hand-computed losses."""

from __future__ import annotations

import math

import numpy as np
import pytest

from portcheck.engines.outputs import PromptScores
from portcheck.model.context import context_dependence

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


def test_the_rise_is_the_loss_lost_with_the_far_context():
    windows = [[(i * 3) % VOCAB for i in range(129)], [(i * 5) % VOCAB for i in range(129)]]
    result = context_dependence(RemembersEverything(), windows, context=64, stride=16)
    # positions 64, 80, 96, 112 of each window (each < 128, the last row with a next token)
    assert result["positions"] == 8 and result["windows"] == 2
    assert result["loss_full"] == pytest.approx(-math.log(0.9), rel=1e-5)
    assert result["loss_cut"] == pytest.approx(math.log(VOCAB), rel=1e-6)
    assert result["rise"] == pytest.approx(math.log(VOCAB) + math.log(0.9), rel=1e-5)
    assert result["rise_by_window"] == pytest.approx([result["rise"]] * 2, rel=1e-6)


def test_windows_no_longer_than_the_context_are_not_run_and_say_so():
    result = context_dependence(RemembersEverything(), [[1, 2, 3]], context=64)
    assert result == {"status": "not run", "reason": "no window is longer than 65 tokens"}
