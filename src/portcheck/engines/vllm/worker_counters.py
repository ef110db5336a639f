"""Inside vLLM's worker: counters that prove an engine mode ran (import-light, like worker_extension).
- forward passes of the model and the tokens each held (a chunked prefill shows as passes no longer than the
  chunk while the prompts are longer; a decode step of N sequences as a pass of N tokens);
- the compilation mode in effect and vLLM's own compilation counter (graphs seen, backend compilations, CUDA
  graphs captured) in this process, where compiled graphs live;
- graph replays: vLLM counts captures but not replays, so the replay method of the platform's graph class
  (torch.cuda.CUDAGraph; torch.npu.NPUGraph under vllm-ascend, whose ACL graphs replay through it) is wrapped with
  a counter. vLLM's CPU backend has neither: it compiles with torch.compile and captures no graph."""

from __future__ import annotations

import dataclasses
from typing import Any

_PASSES: dict[str, Any] = {}
_REPLAYS: dict[str, Any] = {"count": 0, "classes": []}


def start_pass_counter(worker) -> dict:
    from portcheck.engines.vllm.worker_layers import graph_mode_reason, worker_model

    stop_pass_counter()
    reason = graph_mode_reason(worker)
    if reason:
        return {"installed": False, "reason": f"{reason}: a Python hook would be traced, not called"}
    model = worker_model(worker)
    if model is None:
        return {"installed": False, "reason": "no model found on the worker's model runner"}
    _PASSES.update(tokens=[], handle=model.register_forward_pre_hook(_count, with_kwargs=True))
    return {"installed": True}


def _count(_module, args, kwargs):
    positions = kwargs.get("positions", args[1] if len(args) > 1 else None)
    if positions is None:
        positions = kwargs.get("input_ids", args[0] if args else None)
    if positions is not None:
        _PASSES["tokens"].append(int(positions.shape[-1]))


def pass_counts() -> dict:
    tokens = _PASSES.get("tokens")
    if tokens is None:
        return {"installed": False, "reason": "no pass counter installed"}
    sizes = sorted(set(tokens))
    return {"installed": True, "passes": len(tokens), "max_tokens": max(tokens, default=0),
            "tokens": sum(tokens), "passes_by_tokens": {str(n): tokens.count(n) for n in sizes}}


def stop_pass_counter() -> None:
    if _PASSES.get("handle") is not None:
        _PASSES["handle"].remove()
    _PASSES.clear()


def start_replay_counter() -> dict:
    """Count graph replays from now on, wrapping (once) the replay method of each graph class this process has."""
    import torch

    for owner, name in ((getattr(torch, "cuda", None), "CUDAGraph"), (getattr(torch, "npu", None), "NPUGraph")):
        graph = getattr(owner, name, None)
        replay = getattr(graph, "replay", None)
        if replay is None or getattr(replay, "_portcheck_replays", False):
            continue
        graph.replay = _counted_replay(replay)
        _REPLAYS["classes"].append(f"{graph.__module__}.{graph.__qualname__}")
    _REPLAYS["count"] = 0
    return {"installed": bool(_REPLAYS["classes"]), "classes": list(_REPLAYS["classes"])}


def _counted_replay(replay):
    def counted(self, *args, **kwargs):
        _REPLAYS["count"] += 1
        return replay(self, *args, **kwargs)

    counted._portcheck_replays = True
    return counted


def compilation_facts(worker) -> dict:
    """The compilation and CUDA-graph modes in effect (vLLM's `mode`, or `level` on older lines), the compilation
    counter of this process, the platform's device type and the graph replays counted since start_replay_counter
    (None where no graph class could be wrapped)."""
    config = getattr(getattr(worker, "vllm_config", None), "compilation_config", None)
    facts: dict[str, Any] = {"enforce_eager": getattr(getattr(getattr(worker, "vllm_config", None),
                                                              "model_config", None), "enforce_eager", None),
                             "graph_replays": _REPLAYS["count"] if _REPLAYS["classes"] else None,
                             "replay_classes": list(_REPLAYS["classes"]), "device_type": _device_type()}
    for name in ("mode", "level", "cudagraph_mode"):
        value = getattr(config, name, None)
        if value is not None:
            facts[name] = getattr(value, "name", str(value))
    try:
        from vllm.compilation.counter import compilation_counter

        facts["counter"] = {k: v for k, v in dataclasses.asdict(compilation_counter).items() if isinstance(v, int)}
    except Exception as exc:  # noqa: BLE001 - another vLLM line: the mode then cannot prove it ran
        facts["counter_error"] = f"{type(exc).__name__}: {exc}"
    return facts


def _device_type() -> str | None:
    try:
        from vllm.platforms import current_platform
    except Exception:  # noqa: BLE001
        return None
    return str(getattr(current_platform, "device_type", "")) or None
