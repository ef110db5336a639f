"""Train the embedded Qwen3.5's text model with the far-context curriculum, distill its MTP head, ship both
(`make train-tiny`; `--mtp-only` distills the head again from the shipped text model).

Writes into src/portcheck/model/data/: tiny_qwen3_5_text.safetensors (fp32 text tensors; the vision tower is made at
build time) and tiny_qwen3_5_text.json, the run's record: recipe, host, torch version, losses, the far-context
figures on held-out rows, the hash of the text state after the first PREFIX_STEPS steps (tests/test_tiny.py reruns
them) and of the shipped file; then tiny_qwen3_5_mtp.safetensors (the bf16 head the build saves) and
tiny_qwen3_5_mtp.json, its record alike. Minutes on one core (the head: half a minute); deterministic on the same
stack."""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
DATA = ROOT / "src" / "portcheck" / "model" / "data"

PREFIX_STEPS = 3
HELD_OUT_ROWS = 24


def far_context(model, tokenizer, recipe: dict, context: int = 64) -> dict:
    """On rows of the held-out corpus built as the training rows are: the loss at the restated values with the
    whole row before them and with the last `context` tokens only. The corpus's own facts are taken out first: one
    inside a row's gap is the latest fact there, and the model rightly recalls that one instead."""
    import torch

    from portcheck.config import DEFAULT_CORPUS, read_corpus_text
    from portcheck.model import curriculum

    before, between, after = (re.escape(part.strip()) for part in curriculum.TEMPLATE)
    text = re.sub(rf" ?{before} \w+ {between} \w+{after}", "", read_corpus_text(DEFAULT_CORPUS))
    data = torch.tensor(tokenizer.encode(text).ids)
    words = curriculum.fact_words(tokenizer, recipe["words"])
    gen = torch.Generator().manual_seed(99)
    whole, cut = [], []
    with torch.no_grad():
        for _ in range(HELD_OUT_ROWS):
            row, recalled = curriculum.recall_row(data, tokenizer, words, recipe, gen)
            log_probs = torch.log_softmax(model(input_ids=torch.tensor([row])).logits[0].float(), -1)
            for p in recalled:
                whole.append(-log_probs[p - 1, row[p]].item())
                short = model(input_ids=torch.tensor([row[p - context: p]])).logits[0, -1].float()
                cut.append(-torch.log_softmax(short, -1)[row[p]].item())
    return {"rows": HELD_OUT_ROWS, "recalled": len(whole), "context_tokens": context,
            "loss_whole": round(sum(whole) / len(whole), 4), "loss_cut": round(sum(cut) / len(cut), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mtp-only", action="store_true", help="distill the MTP head from the shipped text model")
    args = parser.parse_args()
    if not args.mtp_only:
        train_text(args.seed)
    distill_mtp(args.seed)


def host() -> dict:
    import torch

    from portcheck.env.capture import cpu_model, float_kernel_flags

    return {"cpu": cpu_model(), "float_kernels": float_kernel_flags(), "torch": torch.__version__}


def ship(name: str, data: bytes) -> None:
    from portcheck.atomic import atomic_path

    with atomic_path(DATA / name) as tmp:
        tmp.write_bytes(data)


def train_text(seed: int) -> None:
    from safetensors.torch import save

    from portcheck.model import curriculum, tiny

    started, prefix = time.perf_counter(), {}

    def on_step(step: int, token_loss: float, recall: float, model) -> None:
        if step == PREFIX_STEPS - 1:
            prefix["sha256"] = curriculum.text_state_sha256(model)
        if step % 20 == 0:
            print(f"step {step}: token loss {token_loss:.3f}, at the recalled values {recall:.3f} "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)

    model, losses = tiny.train_text_model(seed, on_step=on_step)
    seconds = time.perf_counter() - started
    tokenizer = tiny.train_tokenizer(tiny.corpus_text())
    tensors = {name: t.detach().contiguous() for name, t in sorted(model.state_dict().items())
               if not name.startswith("model.visual.") and name != "lm_head.weight"}
    data = save(tensors, metadata={"format": "pt"})
    ship(tiny.SHIPPED_TEXT_WEIGHTS, data)
    record = {"seed": seed, "recipe": curriculum.RECIPE, "steps": len(losses), "host": host(),
              "first_loss": round(losses[0], 4), "last_loss": round(losses[-1], 4),
              "far_context": far_context(model, tokenizer, curriculum.RECIPE),
              "prefix_steps": PREFIX_STEPS, "prefix_losses": [round(x, 6) for x in losses[:PREFIX_STEPS]],
              "prefix_text_sha256": prefix["sha256"], "final_text_sha256": curriculum.text_state_sha256(model),
              "sha256": hashlib.sha256(data).hexdigest(), "train_seconds": round(seconds, 1)}
    ship(tiny.SHIPPED_TEXT_RECORD, (json.dumps(record, indent=2) + "\n").encode())
    print(json.dumps(record, indent=2))


def distill_mtp(seed: int) -> None:
    """The head as the default build would distill it from the shipped text model (which the build then loads)."""
    from safetensors.torch import save

    from portcheck.model import curriculum, tiny

    started = time.perf_counter()
    mtp, summary, losses = tiny.distill_mtp_head(seed)
    seconds = time.perf_counter() - started
    prefix, _, _ = tiny.distill_mtp_head(seed, steps=PREFIX_STEPS)
    data = save(dict(sorted(mtp.items())), metadata={"format": "pt"})
    ship(tiny.SHIPPED_MTP_WEIGHTS, data)
    record = {"seed": seed, "mtp_train": summary, "host": host(),
              "text_sha256": tiny.shipped_text_record()["sha256"], "prefix_steps": PREFIX_STEPS,
              "prefix_losses": [round(x, 6) for x in losses[:PREFIX_STEPS]],
              "prefix_mtp_sha256": curriculum.tensors_sha256(prefix), "sha256": hashlib.sha256(data).hexdigest(),
              "train_seconds": round(seconds, 1)}
    ship(tiny.SHIPPED_MTP_RECORD, (json.dumps(record, indent=2) + "\n").encode())
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
