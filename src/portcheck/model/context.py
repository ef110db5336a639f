"""How much the model needs far context (issue 18): the reference's next-token loss on the corpus windows with the
whole window before each position, against the same positions seen through only the last `context` tokens.

A model that forgets within a few tokens loses nothing when the context is cut, and then no fault in a carried
state (Gated DeltaNet's recurrent state across chunks, full attention beyond a window) can move its outputs: the
report states this beside the checks that depend on it."""

from __future__ import annotations

import numpy as np

CONTEXT_TOKENS = 64  # one Gated DeltaNet chunk
STRIDE = 16  # every 16th position past the first chunk; the cuts are scored in batches
FAR_REPEATS = 8  # per window, at most: positions that continue a stretch the window holds only beyond the cut
MIN_MATCH = 4  # tokens of that stretch before the next token


def context_dependence(engine, windows: list[list[int]], context: int = CONTEXT_TOKENS,
                       stride: int = STRIDE, far_repeats: int = FAR_REPEATS) -> dict:
    """Mean next-token loss (nats) at positions >= `context` of each window, with the whole window and with only the
    last `context` tokens (position p: tokens p-context+1..p predict token p+1); and how far cutting moves the
    distributions there: KL(whole || cut) and the share of positions whose top token changes. The loss rise says
    whether the far context helps; the KLD says how much any carried-state fault could move the outputs at most
    (one that loses everything beyond a chunk), useful or not. Measured on every `stride`th position (a sample of the
    text), and apart on the far repeats: positions that continue a stretch of text the window holds only beyond the
    cut, where recalling the far context is the only way to be right (at most `far_repeats` per window)."""
    sampled, repeats, per_window = [], [], []
    for window in windows:
        strided = list(range(context, len(window) - 1, stride))
        if not strided:
            continue
        copies = far_repeat_positions(window, context, far_repeats)
        positions = sorted(set(strided) | set(copies))
        whole_rows = _log_probs(np.asarray(engine.score([window])[0].logits)[positions])
        cut_rows = _log_probs(engine.last_logits([window[p - context + 1: p + 1] for p in positions]))
        rows = dict(zip(positions, _position_figures(window, positions, whole_rows, cut_rows)))
        sampled.extend(rows[p] for p in strided)
        repeats.extend(rows[p] for p in copies)
        per_window.append(float(np.mean([rows[p][1] - rows[p][0] for p in strided])))
    if not sampled:
        return {"status": "not run", "reason": f"no window is longer than {context + 1} tokens"}
    far = ({"per_window_max": far_repeats, "min_match": MIN_MATCH, **_summary(repeats)} if repeats else
           {"status": "not run", "reason": f"no window repeats a stretch from beyond its last {context}"})
    return {"status": "ok", "context_tokens": context, "stride": stride, **_summary(sampled),
            "windows": len(per_window), "rise_by_window": per_window, "far_repeats": far}


def far_repeat_positions(window: list[int], context: int, limit: int, min_match: int = MIN_MATCH) -> list[int]:
    """Positions p >= context whose last `min_match`+ tokens and next token repeat a stretch that the window held
    more than `context` tokens back, where token p+1 is not in the last `context` (a copy, as an induction head makes,
    that only the far context allows); at most `limit`, the longest matches first, in window order. A next token seen
    far back after other words is seldom predictable from that (natural text's far repeats are mostly such)."""
    matches = {}
    for p in range(context, len(window) - 1):
        if window[p + 1] not in window[p - context + 1: p + 1]:
            longest = max((_match_length(window, j, p) for j in range(p - context) if window[j + 1] == window[p + 1]),
                          default=0)
            if longest >= min_match:
                matches[p] = longest
    return sorted(sorted(matches, key=lambda p: (-matches[p], p))[:limit])


def _match_length(window: list[int], j: int, p: int) -> int:
    """How many tokens ending at j equal those ending at p."""
    length = 0
    while length <= j and window[j - length] == window[p - length]:
        length += 1
    return length


def _position_figures(window, positions, whole_rows, cut_rows) -> list[tuple]:
    """(loss whole, loss cut, KL(whole || cut), top-1 changed) at each position."""
    targets = np.asarray([window[p + 1] for p in positions])
    whole = -whole_rows[np.arange(len(positions)), targets]
    short = -cut_rows[np.arange(len(positions)), targets]
    kld = (np.exp(whole_rows) * (whole_rows - cut_rows)).sum(axis=1)
    changed = whole_rows.argmax(axis=1) != cut_rows.argmax(axis=1)
    return list(zip(whole.tolist(), short.tolist(), kld.tolist(), changed.tolist()))


def _summary(figures: list[tuple]) -> dict:
    whole, short, kld, changed = (np.asarray(column, dtype=np.float64) for column in zip(*figures))
    return {"positions": len(figures), "loss_full": float(whole.mean()), "loss_cut": float(short.mean()),
            "rise": float(short.mean() - whole.mean()), "kld_whole_cut_mean": float(kld.mean()),
            "top1_changed_rate": float(changed.mean())}


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
