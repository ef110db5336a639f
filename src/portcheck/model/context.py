"""How much the model needs far context (issue 18): the reference's next-token loss on the corpus windows with the
whole window before each position, against the same positions seen through only the last `context` tokens.

A model that forgets within a few tokens loses nothing when the context is cut, and then no fault in a carried
state (Gated DeltaNet's recurrent state across chunks, full attention beyond a window) can move its outputs: the
report states this beside the checks that depend on it."""

from __future__ import annotations

import numpy as np

CONTEXT_TOKENS = 64  # one Gated DeltaNet chunk
STRIDE = 16  # every 16th position past the first chunk; the cuts are scored in batches


def context_dependence(engine, windows: list[list[int]], context: int = CONTEXT_TOKENS,
                       stride: int = STRIDE) -> dict:
    """Mean next-token loss (nats) at positions >= `context` of each window, with the whole window and with only the
    last `context` tokens (position p: tokens p-context+1..p predict token p+1); and how far cutting moves the
    distributions there: KL(whole || cut) and the share of positions whose top token changes. The loss rise says
    whether the far context helps; the KLD says how much any carried-state fault could move the outputs at most
    (one that loses everything beyond a chunk), useful or not."""
    full, cut, per_window, kld, top1_changed = [], [], [], [], []
    for window in windows:
        positions = list(range(context, len(window) - 1, stride))
        if not positions:
            continue
        whole_rows = _log_probs(np.asarray(engine.score([window])[0].logits)[positions])
        cut_rows = _log_probs(engine.last_logits([window[p - context + 1: p + 1] for p in positions]))
        targets = np.asarray([window[p + 1] for p in positions])
        whole = -whole_rows[np.arange(len(positions)), targets]
        short = -cut_rows[np.arange(len(positions)), targets]
        full.extend(whole)
        cut.extend(short)
        per_window.append(float(np.mean(short) - np.mean(whole)))
        kld.extend((np.exp(whole_rows) * (whole_rows - cut_rows)).sum(axis=1))
        top1_changed.extend(whole_rows.argmax(axis=1) != cut_rows.argmax(axis=1))
    if not full:
        return {"status": "not run", "reason": f"no window is longer than {context + 1} tokens"}
    loss_full, loss_cut = float(np.mean(full)), float(np.mean(cut))
    return {"status": "ok", "context_tokens": context, "stride": stride, "positions": len(full),
            "windows": len(per_window), "loss_full": loss_full, "loss_cut": loss_cut, "rise": loss_cut - loss_full,
            "rise_by_window": per_window, "kld_whole_cut_mean": float(np.mean(kld)),
            "top1_changed_rate": float(np.mean(top1_changed))}


def _log_probs(logits) -> np.ndarray:
    rows = np.asarray(logits, np.float64)
    shifted = rows - rows.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def measure_context(reference: str, model_dir, settings, corpus: dict, out_path) -> None:
    """Rule measure_context: the reference's context dependence on the corpus windows, written as JSON."""
    import time

    from portcheck.atomic import write_json
    from portcheck.dump.run import corpus_windows, load_tokenizer
    from portcheck.engines.factory import make_engine
    from portcheck.targets import parse_target

    windows = corpus_windows(load_tokenizer(model_dir, settings.trust_remote_code), corpus, settings.max_model_len)
    started = time.perf_counter()
    with make_engine(parse_target(reference), model_dir, settings) as engine:
        result = context_dependence(engine, windows)
    write_json(out_path, {"reference": reference, "corpus": {k: corpus[k] for k in ("path", "sha256")},
                          **result, "run_seconds": round(time.perf_counter() - started, 3)})
