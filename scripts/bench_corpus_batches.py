"""The hf reference's corpus windows one per forward pass (what the dump does) against batches of them: time and
whether the logits are the same bit for bit. Figures printed, nothing asserted.

The dump keeps one window per pass only if batching does not give the same numbers everywhere or gains little;
the README says what this measured on which host.

    python scripts/bench_corpus_batches.py [MODEL_DIR] [--dtypes fp32 bf16 --windows 8 --window-length 255]

MODEL_DIR: a checkpoint directory (default: the real-shape one `make bench-real-shape` builds). The windows are cut
from the shipped corpus as the dump cuts them.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def forward(engine, batch: list[list[int]]) -> np.ndarray:
    torch = engine.torch
    with torch.inference_mode():
        return engine.model(input_ids=torch.tensor(batch, device=engine.device)).logits.float().cpu().numpy()


def timed_rows(engine, windows: list[list[int]], per_pass: int) -> tuple[float, list[np.ndarray]]:
    started = time.perf_counter()
    rows = [row for start in range(0, len(windows), per_pass)
            for row in forward(engine, windows[start:start + per_pass])]
    return time.perf_counter() - started, rows


def main() -> None:
    from transformers import AutoTokenizer

    from portcheck.config import DEFAULT_CORPUS, read_corpus_text
    from portcheck.dump.corpus import cut_windows
    from portcheck.engines.factory import make_engine
    from portcheck.engines.settings import EngineSettings
    from portcheck.targets import parse_target

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", nargs="?", default=str(ROOT / "resources" / "bench" / "real-shape"))
    parser.add_argument("--dtypes", nargs="+", default=["fp32"], choices=["fp32", "bf16"])
    parser.add_argument("--windows", type=int, default=8)
    parser.add_argument("--window-length", type=int, default=255)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    windows = cut_windows(tokenizer(read_corpus_text(DEFAULT_CORPUS))["input_ids"], args.window_length, args.windows)
    for dtype in args.dtypes:
        target = parse_target(f"cpu-hf-{dtype}")
        with make_engine(target, args.model_dir, EngineSettings(threads=args.threads)) as engine:
            timed_rows(engine, windows[:1], 1)  # warm-up
            alone_s, alone = timed_rows(engine, windows, 1)
            for per_pass in (2, 4, args.windows):
                batched_s, batched = timed_rows(engine, windows, per_pass)
                same = sum(np.array_equal(a, b) for a, b in zip(alone, batched))
                diff = max(float(np.abs(a - b).max()) for a, b in zip(alone, batched))
                print(f"{target.name}: {args.windows} windows of {args.window_length}: one per pass {alone_s:.1f} s, "
                      f"{per_pass} per pass {batched_s:.1f} s; windows bit for bit the same {same}/{len(alone)}, "
                      f"largest difference {diff:.3g} (largest |logit| {max(np.abs(a).max() for a in alone):.3g})",
                      flush=True)


if __name__ == "__main__":
    main()
