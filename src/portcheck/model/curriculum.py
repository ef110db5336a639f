"""The embedded Qwen3.5's training (issue 18): a tiny model whose predictions need far context.

Trained only on the 6.8k-token corpus, the model memorised it and forgot within a few tokens, so a fault in a
carried state (Gated DeltaNet's recurrent state across 64-token chunks, attention far back) barely moved its outputs.
Here every training row is text in which a fact is stated, "The code for K is V." (K and V each one of 24 one-token
words), and stated again 64-200 tokens of other text later: at the restated V the model is right only if it recalls
the statement 1-4 Gated DeltaNet chunks back. The loss is the next-token loss over the row plus RECIPE["recall_weight"]
times the mean loss at the restated values. The text is the shipped corpus and CPython's pydoc topics (PSF licence;
shipped gzipped, so every host trains on the same bytes): ~260k tokens, so the model learns the language instead of
memorising a page. The Gated DeltaNet decay starts slow (A = 0.02), so the state can carry the fact that far.

Measured: the loss at the restated values fell to 0.1 nats by step 140 of the first phase and to 0.006 at the end
(ln 24 = 3.18 is a guess among the values); rows with 3-6 facts, each to be recalled by its key, stayed at 2.8-2.9
nats after 600-900 steps, and full rows from the start at 3.1 after 160. The run takes ~11 min on one core, more
than fetch_model should spend, so its result is shipped (`make train-tiny`; tiny.py loads it) and tests/test_tiny.py
reruns its first steps against the run's record. One thread, seeded."""

from __future__ import annotations

import gzip
import hashlib
import math
from importlib import resources
from typing import Callable

TEXT_RESOURCE = "pydoc_topics.txt.gz"  # CPython 3.11.7's pydoc_data/topics.py, the topics joined in name order
RECIPE = {
    "steps": 500,
    "batch": 12,
    "seq_len": 320,
    "gap": (64, 200),         # tokens of other text between the statement and its restatement
    # The first steps: one fact per row, near its start, shorter gaps; recall forms there (~100 steps), not in 160
    # steps of the full rows from the start.
    "first": {"steps": 150, "batch": 16, "seq_len": 192, "gap": (64, 110), "facts": 1},
    "lr": 1e-3,
    "warmup": 20,
    "final_lr_fraction": 0.1,  # cosine decay to this share of lr
    "recall_weight": 3.0,
    "words": 24,              # K and V are drawn from 24 one-token words each
    "decay_init": 0.02,       # the Gated DeltaNet layers' A (decay rate) at initialisation
    "threads": 1,
}
TEMPLATE = (" The code for", " is", ".")  # before K, between K and V, after V


def topics_text() -> str:
    return gzip.decompress(resources.files("portcheck.model.data").joinpath(TEXT_RESOURCE).read_bytes()).decode()


def training_text(corpus: str) -> str:
    """The shipped corpus, then the pydoc topics."""
    return corpus + "\n\n" + topics_text()


def fact_words(tokenizer, count: int) -> tuple[list[int], list[int]]:
    """K and V candidates: the lowest-id lowercase words of 4+ letters that the tokenizer writes as one token with
    a leading space (so a corpus can state them as text); the first `count` are keys, the next `count` values."""
    vocab = tokenizer.get_vocab()
    words = sorted((i for t, i in vocab.items() if t.startswith("Ġ") and len(t) >= 5 and t[1:].isalpha()
                    and t[1:].islower() and tokenizer.encode(" " + t[1:]).ids == [i]))
    if len(words) < 2 * count:
        raise ValueError(f"the tokenizer has {len(words)} one-token words, the curriculum needs {2 * count}")
    return words[:count], words[count: 2 * count]


def fact_tokens(tokenizer, key: int, value: int) -> list[int]:
    before, between, after = (tokenizer.encode(part).ids for part in TEMPLATE)
    return [*before, key, *between, value, *after]


def phase(recipe: dict, step: int) -> dict:
    """The row settings at `step`: recipe["first"] for its steps, then the recipe's own."""
    first = recipe["first"]
    return {**recipe, "facts": None, **(first if step < first["steps"] else {})}


def recall_row(data, tokenizer, words: tuple[list[int], list[int]], recipe: dict, gen) -> tuple[list[int], list[int]]:
    """One row of `seq_len` tokens: text, then facts each stated, followed by other text, restated, and so on to the
    end (at most `facts` of them where set); and the positions of the restated values."""
    import torch

    def draw(low: int, high: int) -> int:
        return int(torch.randint(low, high + 1, (1,), generator=gen))

    def text(length: int) -> list[int]:
        start = draw(0, len(data) - length - 1)
        return data[start: start + length].tolist()

    keys, values = words
    row, recalled = text(draw(0, 16)), []
    while True:
        fact = fact_tokens(tokenizer, keys[draw(0, len(keys) - 1)], values[draw(0, len(values) - 1)])
        gap, tail = draw(*recipe["gap"]), draw(4, 24)
        if len(row) + 2 * len(fact) + gap + tail > recipe["seq_len"] or len(recalled) == (recipe.get("facts") or -1):
            break
        row += fact + text(gap) + fact
        recalled.append(len(row) - 2)
        row += text(tail)
    row += text(recipe["seq_len"] - len(row))
    return row, recalled


def learning_rate(step: int, recipe: dict) -> float:
    warm = min(1.0, (step + 1) / recipe["warmup"])
    floor = recipe["final_lr_fraction"]
    return recipe["lr"] * warm * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * step / recipe["steps"])))


def recall_loss(model, rows, recalled: list[list[int]], weight: float):
    """Next-token loss over the rows plus `weight` x the mean loss at the recalled positions; and both parts."""
    import torch

    logits = model(input_ids=rows).logits.float()
    token_loss = -torch.log_softmax(logits[:, :-1], -1).gather(-1, rows[:, 1:, None])[..., 0]
    at_recall = torch.stack([token_loss[b, p - 1] for b, positions in enumerate(recalled) for p in positions]).mean()
    return token_loss.mean() + weight * at_recall, token_loss.mean().item(), at_recall.item()


def slow_decay(model, decay: float) -> None:
    """Every Gated DeltaNet layer's A (the decay rate, stored as A_log) set to `decay`."""
    import torch

    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("A_log"):
                param.fill_(math.log(decay))


def train(model, tokenizer, corpus: str, seed: int, recipe: dict = RECIPE, steps: int | None = None,
          on_step: Callable[[int, float, float, object], None] | None = None) -> list[float]:
    """Train the text model in place (the vision tower is left as initialised); returns the loss per step. `steps`
    stops early (the reproduction test runs a prefix); on_step(step, token loss, recall loss, model) after each."""
    import torch

    data = torch.tensor(tokenizer.encode(training_text(corpus)).ids, dtype=torch.long)
    words = fact_words(tokenizer, recipe["words"])
    gen = torch.Generator().manual_seed(seed + 18)
    slow_decay(model, recipe["decay_init"])
    params = [p for n, p in model.named_parameters() if not n.startswith("model.visual.")]
    opt = torch.optim.AdamW(params, lr=recipe["lr"], weight_decay=0.0)
    model.train()
    losses = []
    for step in range(recipe["steps"] if steps is None else min(steps, recipe["steps"])):
        for group in opt.param_groups:
            group["lr"] = learning_rate(step, recipe)
        rows_of = phase(recipe, step)
        rows, recalled = zip(*(recall_row(data, tokenizer, words, rows_of, gen) for _ in range(rows_of["batch"])))
        loss, token_loss, recall = recall_loss(model, torch.tensor(rows), list(recalled), recipe["recall_weight"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if on_step:
            on_step(step, token_loss, recall, model)
    model.eval()
    return losses


def text_state_sha256(model) -> str:
    """One hash of every text-model tensor's bytes (the reproduction test compares it)."""
    return tensors_sha256({name: tensor for name, tensor in model.state_dict().items()
                           if not name.startswith("model.visual.")})


def tensors_sha256(tensors: dict) -> str:
    """One hash of named tensors' values (as fp32, so bf16 ones hash too), in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(tensors.items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().contiguous().numpy().tobytes())
    return digest.hexdigest()
