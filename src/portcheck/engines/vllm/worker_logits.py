"""Inside vLLM's worker: every position's next-token distribution from the model's own logits. vLLM hands the driver
only log-probs (top-k, or the full vocabulary as Python objects), which give the KLD no more than a lower bound, no
raw logits for msprobe's tensor metrics, and do not scale to Qwen3.5's 248,320 ids. Here a forward hook on the
final norm keeps its output, the model's own compute_logits turns it into logits, and each sequence's rows are kept
as one of two kinds:
- "logits": whole raw logits rows (float32), with the log-prob of each row's next token (the seed prompts' dump);
- "compact": compact records (portcheck.dump.compact): the top-k, the mass outside them and the log-probs at the
  shared sample ids (corpus, decode and mode dumps at a large vocabulary).
One sequence per step (as worker_layers): the hook then sees that sequence's rows alone, prompt rows first (less any
served from the prefix cache) and one row per decode step, so the last rows of a greedy decode are its steps'
distributions. Or, `batched`, a batch decoded together: each pass's rows split by request with the model runner's
own layout of the pass (input_batch.req_ids, query_start_loc: vLLM 0.18 to 0.32), the requests taken in the order
they were first scheduled (first come, first served: the order the driver added them; the driver checks each
step's row against vLLM's own log-prob). The rows go to a file the driver reads. Eager mode only (a hook is traced
into a graph, not called); not under speculative decoding when decoding (a verification pass holds several rows per
step).

Import-light like worker_extension: vLLM's worker imports it by dotted path."""

from __future__ import annotations

from typing import Any

from portcheck.engines.layer_hooks import find_decoder_layers, stream_tensor
from portcheck.engines.vllm.worker_layers import layer_count, graph_mode_reason, worker_model

ROWS_AT_ONCE = 64  # logits rows computed together: 64 x 248,320 float32 is 64 MB
KINDS = ("logits", "compact")
_STATE: dict[str, Any] = {}


def start(worker, kind: str, topk: int = 0, sample_ids: list[int] | None = None, decoding: bool = False,
          batched: bool = False) -> dict:
    """Install the hook; {"ok": False, "reason"} where the rows cannot be made. decoding: rows of decode steps
    will be taken, which speculative decoding's verification passes would not map to steps one for one. batched:
    several sequences per pass, taken with take_batch."""
    stop()
    reason = graph_mode_reason(worker)
    if reason:
        return {"ok": False, "reason": f"{reason}: the final-norm hook would not run"}
    if decoding and getattr(getattr(worker, "vllm_config", None), "speculative_config", None) is not None:
        return {"ok": False, "reason": "speculative decoding: a verification pass scores several draft rows per "
                                       "step, so the final-norm rows do not map to decode steps one for one"}
    model = worker_model(worker)
    found = find_decoder_layers(model, layer_count(worker)) if model is not None else None
    if found is None or not callable(getattr(model, "compute_logits", None)):
        return {"ok": False, "reason": f"no final norm and compute_logits found on {type(model).__name__}"}
    if kind not in KINDS:
        return {"ok": False, "reason": f"unknown row kind {kind!r}; one of {KINDS}"}
    runner = getattr(worker, "model_runner", None) if batched else None
    if batched and pass_layout(runner) is None:
        return {"ok": False, "reason": f"{type(runner).__name__} keeps no input_batch.req_ids and query_start_loc: "
                                       "the rows of a batch cannot be told apart by request"}
    _STATE.update(model=model, kind=kind, topk=int(topk), sample=list(map(int, sample_ids or [])), blocks=[],
                  records=[], runner=runner, by_request={}, handle=found[1].register_forward_hook(_keep))
    return {"ok": True}


def pass_layout(runner) -> list[tuple[str, int, int]] | None:
    """(request id, first row, end row) of each request in the forward pass the runner prepared; None where this
    vLLM's runner does not keep them."""
    batch = getattr(runner, "input_batch", None)
    starts = getattr(getattr(runner, "query_start_loc", None), "np", None)
    if batch is None or starts is None or not hasattr(batch, "req_ids") or not hasattr(batch, "num_reqs"):
        return None
    count = int(batch.num_reqs)
    return [(rid, int(starts[i]), int(starts[i + 1])) for i, rid in enumerate(batch.req_ids[:count])]


def _keep(_module, _inputs, output):
    rows = stream_tensor(output, residual_pair=False).detach()
    if _STATE["runner"] is None:
        _STATE["blocks"].append(rows)
        return
    for request, first, end in pass_layout(_STATE["runner"]):
        _STATE["by_request"].setdefault(request, []).append(rows[first:end])


def take(ids: list[int], seen: int | None = None) -> dict:
    """Keep the sequence just run: the last len(ids) rows the hook saw, row t followed by ids[t + 1] (the last row's
    next token is not in ids), when the hook saw `seen` rows (default len(ids)); the rows seen, for the driver."""
    import torch

    blocks = _STATE["blocks"]
    hidden = torch.cat(blocks) if blocks else None
    blocks.clear()
    rows = 0 if hidden is None else int(hidden.shape[0])
    if hidden is not None and rows == (len(ids) if seen is None else seen) and rows >= len(ids):
        _keep_rows(hidden, ids)
    return {"tokens": rows}


def take_batch(sequences: list[list[int]], seen: list[int]) -> dict:
    """take() for a batch run together: request i (in the order first scheduled) kept as sequences[i] when the
    hook saw seen[i] rows of it; the rows seen per request, for the driver (nothing kept unless all match)."""
    import torch

    by_request = list(_STATE["by_request"].values())
    _STATE["by_request"] = {}
    rows = [sum(int(block.shape[0]) for block in blocks) for blocks in by_request]
    if rows == list(seen) and all(r >= len(ids) for r, ids in zip(rows, sequences)):
        for blocks, ids in zip(by_request, sequences):
            _keep_rows(torch.cat(blocks), ids)
    return {"tokens": rows}


def _keep_rows(hidden, ids: list[int]) -> None:
    """The record of a sequence from its last len(ids) rows."""
    import torch

    hidden = hidden[int(hidden.shape[0]) - len(ids):]
    keep = _whole if _STATE["kind"] == "logits" else _reduce
    parts = [keep(hidden[start:start + ROWS_AT_ONCE], ids, start) for start in range(0, len(ids), ROWS_AT_ONCE)]
    _STATE["records"].append({name: torch.cat([p[name] for p in parts]).cpu().numpy() for name in parts[0]})


def _logprobs(hidden, ids: list[int], start: int):
    """(logits, log-probs, log-prob of each row's next token: NaN on the sequence's last row) of a block of rows."""
    import torch

    logits = _compute_logits(_STATE["model"], hidden)
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    rows = torch.arange(logprobs.shape[0], device=logprobs.device)
    following = torch.tensor(list(ids[start + 1:start + 1 + len(rows)]) + [0] * len(rows), device=logprobs.device)
    token = logprobs[rows, following[: len(rows)]]
    token[rows + start >= len(ids) - 1] = float("nan")  # the last position has no next token in the sequence
    return logits, logprobs, token


def _whole(hidden, ids: list[int], start: int) -> dict:
    import torch

    with torch.inference_mode():
        logits, _, token = _logprobs(hidden, ids, start)
        return {"logits": logits.float(), "token_logprobs": token}


def _reduce(hidden, ids: list[int], start: int) -> dict:
    import torch

    with torch.inference_mode():
        _, logprobs, token = _logprobs(hidden, ids, start)
        top, top_ids = logprobs.topk(min(_STATE["topk"], logprobs.shape[-1]), dim=-1)
        outside = logprobs.scatter(-1, top_ids, float("-inf"))
        sample = torch.tensor(_STATE["sample"], dtype=torch.long, device=logprobs.device)
        return {"topk_ids": top_ids.to(torch.int32), "topk_logprobs": top, "rest_logmass": torch.logsumexp(outside, -1),
                "sample_logprobs": logprobs[:, sample], "token_logprobs": token}


def _compute_logits(model, hidden):
    """The model's logits (lm_head and vLLM's logits processor); older vLLM lines take sampling metadata too."""
    try:
        return model.compute_logits(hidden)
    except TypeError:
        return model.compute_logits(hidden, None)


def write(path: str) -> dict:
    """Write the rows (<name>.<i>) to `path`, remove the hook and forget them."""
    from safetensors.numpy import save_file

    records = _STATE.get("records") or []
    save_file({f"{name}.{i}": array for i, record in enumerate(records) for name, array in record.items()}, path)
    fields = sorted(records[0]) if records else []
    stop()
    return {"sequences": len(records), "fields": fields}


def stop() -> None:
    if _STATE.get("handle") is not None:
        _STATE["handle"].remove()
    _STATE.clear()
