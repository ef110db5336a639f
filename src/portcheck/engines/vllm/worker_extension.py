"""What runs inside vLLM's worker process: `PortcheckWorkerExtension` is mixed into the worker class
(engine argument worker_extension_cls) and called by name with `LLM.collective_rpc`, so no pickled functions
cross process boundaries (no VLLM_ALLOW_INSECURE_SERIALIZATION).

vLLM's worker imports this module by its dotted path: it must stay import-light (no engine module, no heavy
portcheck module, no torch or vllm at top level)."""

from __future__ import annotations

import contextlib
import os
import re
from collections import Counter
from typing import Any


class PortcheckWorkerExtension:
    """Mixed into vLLM's worker class (engine arg worker_extension_cls); called by name via collective_rpc."""

    def portcheck_introspect(self) -> dict:
        return introspect_worker(self)

    def portcheck_peak_memory(self) -> dict:
        """Peak memory of this worker's device (torch's counters on cuda/npu, the worker process's peak RSS on cpu)."""
        from vllm.platforms import current_platform

        from portcheck.engines import devices

        device = {"cuda": "gpu", "npu": "npu"}.get(str(getattr(current_platform, "device_type", "")), "cpu")
        source = "torch max_memory_allocated in the worker" if device != "cpu" else "peak RSS of the worker process"
        return {"bytes": devices.peak_memory_bytes(device), "source": source, "pid": os.getpid()}


def _qualname(obj_or_cls: Any) -> str:
    cls = obj_or_cls if isinstance(obj_or_cls, type) else type(obj_or_cls)
    return f"{cls.__module__}.{cls.__qualname__}"


def _method_name(method: Any) -> str | None:
    func = getattr(method, "__func__", method)
    return getattr(func, "__qualname__", None) or getattr(func, "__name__", None)


def _tensor_facts(value: Any) -> list[dict]:
    """dtype/shape of a tensor or of the tensors in a (nested) list/tuple, e.g. a layer's bound KV/state cache."""
    import torch

    if isinstance(value, torch.Tensor):
        return [{"dtype": str(value.dtype).replace("torch.", ""), "shape": list(value.shape)}]
    if isinstance(value, (list, tuple)):
        return [fact for element in value for fact in _tensor_facts(element)]
    return []


def introspect_worker(worker) -> dict:
    """Facts about the model as this worker built it: plain data only (it crosses processes via msgpack)."""
    import sys

    import torch

    info: dict[str, Any] = {"pid": os.getpid(), "worker_class": _qualname(worker), "errors": []}

    def attempt(key, fn):
        try:
            info[key] = fn()
        except Exception as exc:  # noqa: BLE001 - one missing fact must not hide the others
            info["errors"].append(f"{key}: {type(exc).__name__}: {exc}")

    runner = getattr(worker, "model_runner", None)
    model = runner.get_model() if hasattr(runner, "get_model") else getattr(runner, "model", None)
    if hasattr(model, "unwrap"):  # CUDA/ACL graph wrappers
        model = model.unwrap()
    if model is None:
        info["errors"].append("no model found on the worker's model runner")
        return info
    info["model_class"] = _qualname(model)
    modules = list(model.named_modules())

    def layers():
        found = []
        for name, module in modules:
            mixer_kind = None
            if isinstance(getattr(module, "linear_attn", None), torch.nn.Module):
                mixer_kind, mixer = "linear_attention", module.linear_attn
            elif isinstance(getattr(module, "self_attn", None), torch.nn.Module):
                mixer_kind, mixer = "full_attention", module.self_attn
            if mixer_kind is None:
                continue
            match = re.search(r"layers\.(\d+)$", name)
            found.append({
                "name": name,
                "index": int(match.group(1)) if match else None,
                "kind": mixer_kind,
                "mtp": "mtp" in name.split("."),
                "layer_class": _qualname(module),
                "mixer_class": _qualname(mixer),
            })
        return found

    attempt("layers", layers)

    def gdn():
        found = []
        for name, module in modules:
            mixer = getattr(module, "linear_attn", None)
            if not isinstance(mixer, torch.nn.Module):
                continue
            rule = getattr(mixer, "chunk_gated_delta_rule", None)
            state_dtype = None
            if hasattr(mixer, "get_state_dtype"):
                with contextlib.suppress(Exception):
                    state_dtype = [str(d).replace("torch.", "") for d in mixer.get_state_dtype()]
            found.append({
                "layer": name,
                "class": _qualname(mixer),
                "forward": _method_name(getattr(mixer, "_forward_method", None)),
                "prefill_backend": getattr(mixer, "gdn_prefill_backend", None),
                "decode_kernel": getattr(mixer, "gdn_decode_kernel", None),
                "chunk_rule_class": _qualname(rule) if rule is not None else None,
                "chunk_rule_forward": _method_name(getattr(rule, "_forward_method", None)) if rule else None,
                "state_dtype_declared": state_dtype,
                "state_tensors": _tensor_facts(getattr(mixer, "kv_cache", None)),
            })
        return found

    attempt("gdn_layers", gdn)

    def attention():
        found = []
        for name, module in modules:
            mixer = getattr(module, "self_attn", None)
            attn = getattr(mixer, "attn", None) if isinstance(mixer, torch.nn.Module) else None
            if attn is None:
                continue
            backend = getattr(attn, "attn_backend", None)
            backend_name = None
            if backend is not None:
                with contextlib.suppress(Exception):
                    backend_name = backend.get_name()
            found.append({
                "layer": name,
                "class": _qualname(attn),
                "impl": _qualname(attn.impl) if getattr(attn, "impl", None) is not None else None,
                "backend": backend_name,
                "kv_cache_dtype": getattr(attn, "kv_cache_dtype", None),
                "kv_tensors": _tensor_facts(getattr(attn, "kv_cache", None))[:2],
            })
        return found

    attempt("attention_layers", attention)

    def parameters():
        dtypes, parts = Counter(), Counter()
        for name, param in model.named_parameters():
            dtypes[str(param.dtype).replace("torch.", "")] += param.numel()
            part = "mtp" if "mtp" in name.split(".") else "vision" if name.startswith("visual.") else "text"
            parts[part] += param.numel()
        first = next(model.parameters(), None)
        device = str(first.device) if first is not None else None
        return {"dtypes": dict(dtypes), "by_part": dict(parts), "device": device}

    attempt("parameters", parameters)

    def mtp():
        names = [n for n, _ in modules if "mtp" in n.split(".")]
        drafter = getattr(runner, "drafter", None)
        drafter_class = _qualname(drafter) if drafter is not None else None
        return {"modules": len(names), "first": names[:3], "drafter": drafter_class}

    attempt("mtp", mtp)

    def vision():
        visual = getattr(model, "visual", None) if "visual" in model.__dict__.get("_modules", {}) else None
        if visual is None:
            return {"class": None, "parameters": 0}
        return {"class": _qualname(visual), "parameters": sum(p.numel() for p in visual.parameters())}

    attempt("vision", vision)

    def plugin():
        from vllm.model_executor import custom_op

        oot = getattr(custom_op, "op_registry_oot", {}) or {}
        return {
            "vllm_ascend_imported": "vllm_ascend" in sys.modules,
            "patch_modules": sorted(m for m in sys.modules if m.startswith("vllm_ascend.patch.")),
            "oot_custom_ops": {name: _qualname(cls) for name, cls in sorted(oot.items())},
            "plugin_classes_in_model": sorted({
                _qualname(m) for _, m in modules if type(m).__module__.split(".")[0] == "vllm_ascend"
            }),
        }

    attempt("plugin", plugin)

    def threads():
        affinity = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
        return {"torch_threads": torch.get_num_threads(), "main_thread_cpu_affinity": affinity}

    attempt("threads", threads)
    return info
