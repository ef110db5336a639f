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

    def portcheck_install_gdn_counters(self) -> dict:
        """Wrap the GDN kernels and forward methods of this worker's model with call counters (eager mode only)."""
        return install_gdn_counters(self)

    def portcheck_gdn_counts(self) -> dict:
        """Calls counted since portcheck_install_gdn_counters, by the called function's own module.qualname."""
        return gdn_counts()

    def portcheck_layers_start(self, indices: list[int] | None = None) -> dict:
        """Hooks on the decoder layers, final norm and GDN states (where it diverges); eager mode only."""
        from portcheck.engines.vllm import worker_layers

        return worker_layers.start(self, indices)

    def portcheck_layers_take(self, _ids: list[int] | None = None) -> dict:
        from portcheck.engines.vllm import worker_layers

        return worker_layers.take()

    def portcheck_layers_write(self, path: str) -> dict:
        from portcheck.engines.vllm import worker_layers

        return worker_layers.write(path)

    def portcheck_logits_start(self, kind: str, topk: int = 0, sample_ids: list[int] | None = None,
                               decoding: bool = False, batched: bool = False) -> dict:
        """Whole logits rows or compact records of every position from the model's own logits; eager mode only."""
        from portcheck.engines.vllm import worker_logits

        return worker_logits.start(self, kind, topk, sample_ids, decoding, batched)

    def portcheck_logits_take(self, ids: list[int], seen: int | None = None) -> dict:
        from portcheck.engines.vllm import worker_logits

        return worker_logits.take(ids, seen)

    def portcheck_logits_take_batch(self, sequences: list[list[int]], seen: list[int]) -> dict:
        from portcheck.engines.vllm import worker_logits

        return worker_logits.take_batch(sequences, seen)

    def portcheck_logits_write(self, path: str) -> dict:
        from portcheck.engines.vllm import worker_logits

        return worker_logits.write(path)

    def portcheck_vision_start(self) -> dict:
        """Hooks on the vision blocks, the merger and the model's rotary positions (image prompts); eager mode."""
        from portcheck.engines.vllm import worker_vision

        return worker_vision.start(self)

    def portcheck_vision_take(self, tokens: int) -> dict:
        from portcheck.engines.vllm import worker_vision

        return worker_vision.take(tokens)

    def portcheck_vision_write(self, path: str) -> dict:
        from portcheck.engines.vllm import worker_vision

        return worker_vision.write(path)

    def portcheck_set_fault(self, fault: str) -> dict:
        """Switch the fault plugin's fault in this worker (make calibrate: many faults per engine start)."""
        from portcheck.faults import vllm_plugin

        return vllm_plugin.set_fault(fault)

    def portcheck_count_passes(self) -> dict:
        """Count the model's forward passes and their tokens from now on (engine-mode proof; eager only)."""
        from portcheck.engines.vllm import worker_counters

        return worker_counters.start_pass_counter(self)

    def portcheck_pass_counts(self) -> dict:
        from portcheck.engines.vllm import worker_counters

        return worker_counters.pass_counts()

    def portcheck_count_replays(self) -> dict:
        """Count graph replays from now on (graph-mode proof: vLLM counts captures, not replays)."""
        from portcheck.engines.vllm import worker_counters

        return worker_counters.start_replay_counter()

    def portcheck_compilation(self) -> dict:
        from portcheck.engines.vllm import worker_counters

        return worker_counters.compilation_facts(self)

    def portcheck_peak_memory(self) -> dict:
        """Peak memory of this worker's device (torch's counters on cuda/npu, the worker process's peak RSS on cpu)."""
        from vllm.platforms import current_platform

        from portcheck.engines import devices

        device = {"cuda": "gpu", "npu": "npu"}.get(str(getattr(current_platform, "device_type", "")), "cpu")
        source = ("torch max_memory_allocated in the worker: weights + the KV cache vLLM allocates after profiling "
                  "+ activations since (vLLM resets the peak before profiling); its parts below"
                  if device != "cpu" else "peak RSS of the worker process")
        return {"bytes": devices.peak_memory_bytes(device), "source": source, "pid": os.getpid(),
                "split": memory_split(self)}


def memory_split(worker) -> dict:
    """vLLM's own start-up memory figures, kept on the worker (bytes; None where this vLLM or platform keeps none):
    weights (model_runner.model_memory_usage, every line and vllm-ascend), peak activation during profiling
    (peak_activation_memory: vLLM 0.18-0.32, vllm-ascend 0.23), non-torch memory (non_torch_memory: vLLM 0.18/0.23,
    vllm-ascend 0.23; vLLM 0.32 keeps total_consumed = weights + non-torch only), the KV cache budget
    (available_kv_cache_memory_bytes, else kv_cache_memory_bytes where set) and what was allocated
    (model_runner.kv_caches' storages, each counted once: vLLM 0.32's KVCacheTensor entries alias one backing
    allocation, so their sizes overcount), the reservation
    (requested_memory; requested_cpu_memory on CPU) and the device's total."""
    runner = getattr(worker, "model_runner", None)
    weights = _number(getattr(runner, "model_memory_usage", None))
    non_torch = _number(getattr(worker, "non_torch_memory", None))
    consumed = _number(getattr(worker, "total_consumed", None))
    non_torch_source = "non_torch_memory"
    if non_torch is None and consumed is not None and weights is not None:
        non_torch, non_torch_source = consumed - weights, "total_consumed - model_memory_usage"
    allocated = _storage_bytes(getattr(runner, "kv_caches", None))
    snapshot = getattr(worker, "init_snapshot", None)
    cache = getattr(worker, "cache_config", None)
    # vLLM CPU 0.18 sizes its KV cache from cpu_kvcache_space_bytes alone (VLLM_CPU_KVCACHE_SPACE, else half the
    # host's RAM), whatever kv_cache_memory_bytes says; 0.23 and 0.32 honour kv_cache_memory_bytes
    cpu_space = _number(getattr(cache, "cpu_kvcache_space_bytes", None))
    explicit_kv = None if cpu_space is not None else _number(getattr(cache, "kv_cache_memory_bytes", None))
    # the budget: the first figure this vLLM keeps (the CPU workers keep no available_kv_cache_memory_bytes)
    budget_source, budget = next(((name, value) for name, value in (
        ("available_kv_cache_memory_bytes", _number(getattr(worker, "available_kv_cache_memory_bytes", None))),
        ("cpu_kvcache_space_bytes", cpu_space), ("kv_cache_memory_bytes", explicit_kv)) if value is not None),
        (None, None))
    return {
        "weights": weights,
        "peak_activation": _number(getattr(worker, "peak_activation_memory", None)),
        "non_torch": non_torch,
        "non_torch_source": non_torch_source if non_torch is not None else None,
        "kv_cache_budget": budget,
        "kv_cache_budget_source": budget_source,
        "kv_cache_allocated": allocated,
        "requested": _number(getattr(worker, "requested_memory", None) or getattr(worker, "requested_cpu_memory", None)),
        "kv_cache_explicit": explicit_kv is not None,  # kv_cache_memory_bytes, not the share, sized the KV cache
        "device_total": _number(getattr(snapshot, "total_memory", None)),
    }


def _storage_bytes(value, seen: dict | None = None) -> int | None:
    """Bytes of the distinct storages behind the tensors in a (nested) list/tuple/dict; None where there are none."""
    import torch

    seen = {} if seen is None else seen
    if isinstance(value, torch.Tensor):
        storage = value.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    elif isinstance(value, (list, tuple)):
        for element in value:
            _storage_bytes(element, seen)
    elif isinstance(value, dict):
        for element in value.values():
            _storage_bytes(element, seen)
    return sum(seen.values()) or None


def _number(value) -> int | None:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


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

    from portcheck.engines.vllm.worker_layers import worker_model

    runner = getattr(worker, "model_runner", None)
    model = worker_model(worker)
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
                "forward_bound": _function_name(getattr(mixer, "_forward_method", None)),
                "prefill_backend": getattr(mixer, "gdn_prefill_backend", None),
                "decode_kernel": getattr(mixer, "gdn_decode_kernel", None),
                "chunk_rule_class": _qualname(rule) if rule is not None else None,
                "chunk_rule_forward": _method_name(getattr(rule, "_forward_method", None)) if rule else None,
                "state_dtype_declared": state_dtype,
                "state_tensors": _tensor_facts(getattr(mixer, "kv_cache", None)),
            })
        return found

    attempt("gdn_layers", gdn)

    def gdn_bindings():
        classes = {}
        for _, module in modules:
            mixer = getattr(module, "linear_attn", None)
            if isinstance(mixer, torch.nn.Module) and _qualname(mixer) not in classes:
                classes[_qualname(mixer)] = class_bindings(type(mixer))
        return classes

    attempt("gdn_bindings", gdn_bindings)
    attempt("foreign_bindings", foreign_bindings)
    info["gdn_counts"] = gdn_counts()

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
                "backend_class": (_qualname(backend) if isinstance(backend, type)
                                  else _qualname(backend) if backend is not None else None),
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


# -- GDN bindings: what the GDN layer class and its modules resolve at call time --------------------------------
# A plugin (vllm-ascend) may keep vLLM's GDN class and rebind its methods, or swap the kernels its modules call:
# the class name and its dispatch attributes then say nothing about what runs. These read the functions bound now.

FORWARD_RE = re.compile(r"^_?forward(_\w+)?$")
KERNEL_RE = re.compile(r"gated_delta|causal_conv1d|fused_recurrent|gdn_gating|gdn_attention|fused_gdn|l2norm_fwd"
                       r"|gdn_core|gdn_\w*(prefill|decode)")
NOT_KERNEL_RE = re.compile(r"_?(register|resolve|log|compute|get|is|can)_")
GDN_MODULE_RE = re.compile(r"(^|[._])(gdn|gated_delta|fla)([._]|$)|gdn_|_gdn")
_COUNTS: Counter = Counter()
_INSTALLED: dict[str, Any] = {"state": None}
_WRAPPED: list[tuple[Any, str, Any]] = []  # (class or module, attribute, original) of each counter installed there


def _function_name(obj: Any) -> str | None:
    """module.qualname of a function (unwrapping bound methods and portcheck's counters), else of its type."""
    if obj is None:
        return None
    func = getattr(obj, "__func__", obj)
    func = getattr(func, "_portcheck_original", func)
    module, qualname = getattr(func, "__module__", None), getattr(func, "__qualname__", None)
    if module and qualname:
        return f"{module}.{qualname}"
    return _qualname(func)


def _own_mro(cls) -> list:
    """The class and its bases, less torch's nn.Module and what it derives from."""
    return [k for k in cls.__mro__ if _top(k.__module__) not in ("torch", "builtins")]


def _top(name: str | None) -> str:
    return (name or "").split(".")[0]


def _plain_function(obj: Any) -> bool:
    import types

    return isinstance(obj, types.FunctionType)


def _kernel_bindings(module) -> dict[str, Any]:
    """Module-level callables of `module` whose names look like GDN kernels (name -> the object bound now)."""
    found = {}
    for name, value in list(vars(module).items()):
        if name.startswith("__") or isinstance(value, type) or not callable(value) or NOT_KERNEL_RE.match(name):
            continue
        if KERNEL_RE.search(name) or KERNEL_RE.search(getattr(value, "__name__", "") or ""):
            found[name] = value
    return found


def _gdn_modules(cls) -> list:
    """The modules a GDN class's code resolves names in: its own, those of its bound forward-family functions and
    every loaded module whose name says GDN (vLLM's CPU GDN ops, vllm_ascend.ops.gdn, a plugin's module...)."""
    import sys

    names = [cls.__module__]
    for klass in _own_mro(cls):
        for attr, value in vars(klass).items():
            func = getattr(value, "_portcheck_original", value)
            if FORWARD_RE.match(attr) and _plain_function(func) and func.__module__ not in names:
                names.append(func.__module__)
    names += sorted(n for n in list(sys.modules) if GDN_MODULE_RE.search(n.split(".")[-1]) and n not in names
                    and _top(n) not in ("torch", "transformers"))
    return [sys.modules[n] for n in names if n in sys.modules]


def class_bindings(cls) -> dict:
    """What is bound on a GDN layer class now: forward-family methods, kernels its modules resolve, and bindings
    owned by another top package than the class's (a platform plugin's rebinding)."""
    forwards = {}
    for klass in reversed(_own_mro(cls)):
        for attr, value in vars(klass).items():
            if FORWARD_RE.match(attr) and callable(getattr(value, "__func__", value)):
                forwards[attr] = _function_name(value)
    kernels, foreign = {}, {}
    for attr, name in forwards.items():
        if _top(name) != _top(cls.__module__):
            foreign[f"{_qualname(cls)}.{attr}"] = name
    for module in _gdn_modules(cls):
        for attr, value in _kernel_bindings(module).items():
            name = _function_name(value)
            kernels[f"{module.__name__}.{attr}"] = name
            if _top(name) not in (_top(module.__name__), "torch") and _top(module.__name__) == _top(cls.__module__):
                foreign[f"{module.__name__}.{attr}"] = name
    return {"forward_methods": forwards, "kernels": kernels, "foreign": foreign}


def _plugin_packages() -> list[str]:
    """Top packages of vLLM's platform and general plugins (entry points), and vllm_ascend."""
    from importlib.metadata import entry_points

    tops = {"vllm_ascend"}
    for group in ("vllm.platform_plugins", "vllm.general_plugins"):
        with contextlib.suppress(Exception):
            tops.update(_top(ep.value.split(":")[0]) for ep in entry_points(group=group))
    return sorted(tops - {"vllm"})


def foreign_bindings() -> dict:
    """vLLM attributes (module globals and class attributes in loaded vllm.* modules) whose value is now a function
    of a plugin package: what vllm-ascend's patch modules actually rebound, whatever model is loaded."""
    import sys

    owners = set(_plugin_packages())
    found = {}
    for modname, module in list(sys.modules.items()):
        if _top(modname) != "vllm" or module is None:
            continue
        with contextlib.suppress(Exception):
            for attr, value in list(vars(module).items()):
                if isinstance(value, type) and value.__module__ == modname:
                    for cattr, cvalue in list(vars(value).items()):
                        func = getattr(cvalue, "__func__", cvalue)
                        if _plain_function(func) and _top(_function_name(func)) in owners:
                            found[f"{modname}.{value.__qualname__}.{cattr}"] = _function_name(func)
                elif isinstance(value, type) and _top(value.__module__) in owners:  # a whole class swapped
                    found[f"{modname}.{attr}"] = _qualname(value)
                elif _plain_function(value) and _top(_function_name(value)) in owners:
                    found[f"{modname}.{attr}"] = _function_name(value)
    return {"plugin_packages": sorted(owners), "bindings": dict(sorted(found.items()))}


def _counting(func, key: str):
    import functools

    @functools.wraps(func)
    def counted(*args, **kwargs):
        _COUNTS[key] += 1
        return func(*args, **kwargs)

    counted._portcheck_original = func
    return counted


def install_gdn_counters(worker) -> dict:
    """Wrap, in this worker, the plain-Python GDN kernels bound at module level (triton JITFunctions and torch ops
    are left alone), the forward-family methods of the model's GDN classes and each GDN layer's _forward_method."""
    import torch

    if _INSTALLED["state"] is not None:
        return _INSTALLED["state"]
    from portcheck.engines.vllm.worker_layers import graph_mode_reason, worker_model

    reason = graph_mode_reason(worker)
    if reason:
        _INSTALLED["state"] = {"installed": False,
                               "reason": f"{reason}: Python counters would be traced, not called; calls are not counted"}
        return _INSTALLED["state"]
    model = worker_model(worker)
    mixers = [m.linear_attn for _, m in model.named_modules()
              if isinstance(getattr(m, "linear_attn", None), torch.nn.Module)]
    wrapped = []
    for cls in {type(m) for m in mixers}:
        for klass in _own_mro(cls):
            for attr, value in list(vars(klass).items()):
                if FORWARD_RE.match(attr) and _plain_function(value) and not hasattr(value, "_portcheck_original"):
                    _wrap_counted(klass, attr, value)
                    wrapped.append(f"{_qualname(klass)}.{attr}")
        for module in _gdn_modules(cls):
            for attr, value in _kernel_bindings(module).items():
                if _plain_function(value) and not hasattr(value, "_portcheck_original"):
                    _wrap_counted(module, attr, value)
                    wrapped.append(f"{module.__name__}.{attr}")
    for mixer in mixers:  # dispatch bound at construction: a bound method on the instance
        bound = mixer.__dict__.get("_forward_method")
        func = getattr(bound, "__func__", None)
        if _plain_function(func) and not hasattr(func, "_portcheck_original"):
            mixer._forward_method = _counting(func, _function_name(func)).__get__(mixer)
    _INSTALLED["state"] = {"installed": True, "wrapped": sorted(set(wrapped)), "layers": len(mixers)}
    return _INSTALLED["state"]


def _wrap_counted(owner, attr: str, original) -> None:
    setattr(owner, attr, _counting(original, _function_name(original)))
    _WRAPPED.append((owner, attr, original))


def uninstall_gdn_counters() -> None:
    """Put back what install_gdn_counters wrapped in classes and modules, last first. An in-process engine's close
    calls it: its worker shares this process's vLLM classes with the next engine, which must find vLLM's own
    functions (or a fault plugin's) and install counters of its own."""
    while _WRAPPED:
        owner, attr, original = _WRAPPED.pop()
        setattr(owner, attr, original)
    _COUNTS.clear()
    _INSTALLED["state"] = None


def gdn_counts() -> dict:
    state = _INSTALLED["state"]
    if state is None:
        return {"installed": False, "reason": "no counters installed (portcheck_install_gdn_counters not called)"}
    return {**state, "counts": dict(sorted(_COUNTS.items()))}
