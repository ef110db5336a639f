"""Inside vLLM's worker: compact records (portcheck.dump.compact) of every position's whole next-token distribution.
vLLM hands the driver only top-k log-probs, which give the KLD no more than a lower bound; here a forward hook on the
final norm keeps its output, the model's own compute_logits turns it into logits, and each row is reduced in the
worker to its top-k, the mass outside them and the log-probs at the shared sample ids, so a vLLM target at a large
vocabulary gets the KLD estimate. One sequence per step (as worker_layers); the records go to a file the driver
reads. Eager mode only (a hook is traced into a graph, not called).

Import-light like worker_extension: vLLM's worker imports it by dotted path."""

from __future__ import annotations

from typing import Any

from portcheck.engines.layer_hooks import find_decoder_layers, stream_tensor
from portcheck.engines.vllm.worker_layers import layer_count, graph_mode_reason, worker_model

ROWS_AT_ONCE = 64  # logits rows computed together: 64 x 248,320 float32 is 64 MB
_STATE: dict[str, Any] = {}


def start(worker, topk: int, sample_ids: list[int]) -> dict:
    """Install the hook; {"ok": False, "reason"} where the records cannot be made."""
    stop()
    reason = graph_mode_reason(worker)
    if reason:
        return {"ok": False, "reason": f"{reason}: the final-norm hook would not run"}
    model = worker_model(worker)
    found = find_decoder_layers(model, layer_count(worker)) if model is not None else None
    if found is None or not callable(getattr(model, "compute_logits", None)):
        return {"ok": False, "reason": f"no final norm and compute_logits found on {type(model).__name__}"}
    _STATE.update(model=model, topk=int(topk), sample=list(map(int, sample_ids)), blocks=[], records=[],
                  handle=found[1].register_forward_hook(_keep))
    return {"ok": True}


def _keep(_module, _inputs, output):
    _STATE["blocks"].append(stream_tensor(output, residual_pair=False).detach())


def take(ids: list[int]) -> dict:
    """Reduce the sequence just run (input ids `ids`) to compact records; the positions seen, for the driver's check."""
    import torch

    blocks = _STATE["blocks"]
    hidden = torch.cat(blocks) if blocks else None
    blocks.clear()
    if hidden is None or hidden.shape[0] != len(ids):
        return {"tokens": 0 if hidden is None else int(hidden.shape[0])}
    parts = [_reduce(hidden[start:start + ROWS_AT_ONCE], ids, start) for start in range(0, len(ids), ROWS_AT_ONCE)]
    _STATE["records"].append({name: torch.cat([p[name] for p in parts]).cpu().numpy() for name in parts[0]})
    return {"tokens": len(ids)}


def _reduce(hidden, ids: list[int], start: int) -> dict:
    import torch

    with torch.inference_mode():
        logits = _compute_logits(_STATE["model"], hidden)
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        top, top_ids = logprobs.topk(min(_STATE["topk"], logprobs.shape[-1]), dim=-1)
        outside = logprobs.scatter(-1, top_ids, float("-inf"))
        rows = torch.arange(logprobs.shape[0], device=logprobs.device)
        following = torch.tensor(list(ids[start + 1:start + 1 + len(rows)]) + [0] * len(rows), device=logprobs.device)
        token = logprobs[rows, following[: len(rows)]]
        token[rows + start >= len(ids) - 1] = float("nan")  # the last position has no next token in the sequence
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
    """Write the records (<name>.<i>) to `path`, remove the hook and forget them."""
    from safetensors.numpy import save_file

    records = _STATE.get("records") or []
    save_file({f"{name}.{i}": array for i, record in enumerate(records) for name, array in record.items()}, path)
    stop()
    return {"sequences": len(records)}


def stop() -> None:
    if _STATE.get("handle") is not None:
        _STATE["handle"].remove()
    _STATE.clear()
