"""The vLLM engine's adaptation items: how vLLM adapted the checkpoint, measured on the model its worker built
(introspect_worker's info), on vLLM's configs in this process and on its log. Every item says why when it is
"not determined"."""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from portcheck.env.versions import distribution_version
from portcheck.engines.outputs import item
from portcheck.engines.vllm.logs import logged_figures, read_log
from portcheck.engines.vllm.preflight import importable
from portcheck.model.checkpoint import text_settings

if TYPE_CHECKING:
    from portcheck.engines.vllm.engine import VLLMEngine


def adaptation_items(engine: VLLMEngine) -> dict[str, Any]:
    """Every adaptation item of a started engine (VLLMEngine.adaptation)."""
    try:
        info = engine.worker_info()
        info_error = "; ".join(info.get("errors", [])) or None
    except Exception as exc:  # noqa: BLE001 - every item then says why it is not determined
        info, info_error = {}, f"worker introspection failed: {type(exc).__name__}: {exc}"
    why = f" ({info_error})" if info_error else ""
    llm_engine = engine.llm.llm_engine if engine.llm is not None else None
    model_config = getattr(llm_engine, "model_config", None)
    vllm_config = getattr(llm_engine, "vllm_config", None)
    cache_config = getattr(vllm_config, "cache_config", None)
    logged = logged_figures(read_log(engine.log_path))
    no_log = "vLLM's log is not captured (user logging config)" if engine.log_path is None else "not in vLLM's log"
    checkpoint_config = engine.model_config_json
    text_config = text_settings(checkpoint_config)

    items: dict[str, Any] = {}
    items["vllm_version"] = item(engine.vllm_version, "ok" if engine.vllm_version else "not determined",
                                 f"package metadata; platform {engine.platform}")
    items["engine_class"] = architecture_item(info, model_config, checkpoint_config, why)
    items["vllm_ascend"] = ascend_item(engine.device)
    items["vllm_ascend_patches"] = patches_item(info, engine.device, why)
    items.update(layer_items(info, text_config, why))
    items["gdn_implementation"] = gdn_item(info, engine.platform, why)
    items["attention_backend"] = attention_item(info, why)
    items.update(checkpoint_items(info, engine.model_dir, vllm_config, engine.settings.language_model_only, why))
    items["ssm_state_dtype"] = state_dtype_item(info, cache_config, text_config, why)
    items["weights_dtype"] = (
        item(info["parameters"]["dtypes"], "ok", "parameter elements per dtype in the built model")
        if info.get("parameters") else item(None, "not determined", f"no worker introspection{why}")
    )
    items["weight_load_s"] = (
        item(round(logged["weight_load_s"], 3), "ok",
             "vLLM's own timer around load_weights ('Loading weights took'), read from its log"
             + (f"; whole model load {logged['model_load_s']:.3f} s" if "model_load_s" in logged else "")
             + (f"; model construction {logged['model_init_s']:.3f} s" if "model_init_s" in logged else ""))
        if "weight_load_s" in logged else item(None, "not determined", no_log)
    )
    items["engine_start_s"] = item(
        round(engine.timings["engine_start_s"], 3), "ok",
        "wall time of vllm.LLM(...) ("
        + ("in this process, the worker in it" if engine.in_process else "its processes")
        + ", weights, profiling, KV cache, warm-up)"
        + (f"; vLLM's engine init {logged['engine_init_s']:.2f} s" if "engine_init_s" in logged else "")
        + f"; import vllm took {engine.timings['vllm_import_s']:.1f} s more",
    )
    items.update(kv_items(cache_config, logged, no_log, engine.max_model_len))
    items["engine_args"] = item(
        {k: v for k, v in engine.llm_kwargs.items() if k not in ("model", "log_config_file", "worker_extension_cls")}
        | ({"env": engine.engine_env} if engine.engine_env else {}),
        "ok", "keyword arguments given to vllm.LLM",
    )
    items["cpu_threads"] = (
        item(info["threads"], "ok", "torch threads in the worker and its main thread's CPU affinity (vLLM "
             "pins its OpenMP threads one per CPU; settings.threads sets VLLM_CPU_OMP_THREADS_BIND)")
        if info.get("threads") else item(None, "not determined", f"no worker introspection{why}")
    )
    items["engine_log"] = item(str(engine.log_path) if engine.log_path else None,
                               "ok" if engine.log_path else "not determined", "vLLM's log of this engine")
    return items


def architecture_item(info, model_config, checkpoint_config: dict, why: str):
    archs = checkpoint_config.get("architectures") or []
    registered, resolved = None, None
    with contextlib.suppress(Exception):
        from vllm.model_executor.models import ModelRegistry

        registered = {a: a in ModelRegistry.get_supported_archs() for a in archs}
    with contextlib.suppress(Exception):
        resolved = model_config._model_info.architecture
    value = {"checkpoint": archs, "in_registry": registered, "resolved": resolved,
             "built_class": info.get("model_class"), "model_impl": getattr(model_config, "model_impl", None)}
    if not info.get("model_class"):
        return item(value, "not determined", f"the built model could not be inspected{why}")
    if registered is not None and not any(registered.values()):
        return item(value, "failed",
                    "architecture not in vLLM's ModelRegistry; vLLM fell back to another implementation")
    return item(value, "ok", "registry lookup in this process; class read from the model in the worker")


def ascend_item(device: str):
    present = importable("vllm_ascend")
    version = distribution_version("vllm-ascend", "vllm_ascend") if present else None
    if present:
        return item({"present": True, "version": version}, "ok",
                    "vllm-ascend importable; vLLM loads it as its platform plugin")
    note = "not installed" + ("; not needed on this device" if device != "npu" else "")
    return item({"present": False, "version": None}, "ok", note)


def patches_item(info, device: str, why: str):
    """The vLLM attributes that plugin functions own now (vllm-ascend imports every patch module whatever the
    model, so the imported module names say little)."""
    plugin = info.get("plugin")
    foreign = info.get("foreign_bindings")
    owned = (foreign or {}).get("bindings") or {}
    if not importable("vllm_ascend") and not owned:
        return item(None, "not determined", f"vllm-ascend is not installed on this {device} host; "
                    "no patches or custom ops to introspect"
                    + (f"; out-of-tree custom ops registered: {len(plugin['oot_custom_ops'])}" if plugin else "")
                    + (f"; no vLLM attribute is bound to a plugin function ({foreign['plugin_packages']})"
                       if foreign else ""))
    if not plugin and foreign is None:
        return item(None, "not determined", f"no worker introspection{why}")
    plugin = plugin or {}
    value = {"rebound": owned, "patch_modules_imported": len(plugin.get("patch_modules") or []),
             "oot_custom_ops": plugin.get("oot_custom_ops"),
             "plugin_classes_in_model": plugin.get("plugin_classes_in_model")}
    if not owned and importable("vllm_ascend") and not plugin.get("vllm_ascend_imported"):
        return item(value, "failed", "vllm-ascend is installed but the worker never imported it")
    return item(value, "ok", "rebound: vLLM module globals and class attributes (loaded vllm.* modules) whose value "
                f"is now a function of a plugin package {(foreign or {}).get('plugin_packages')}, -> that function's "
                "module.qualname; plus out-of-tree CustomOp registrations and plugin classes in the built model")


def layer_items(info, text_config: dict, why: str):
    expected = list(text_config.get("layer_types") or [])
    expected_counts = dict(Counter(expected))
    layers = [layer for layer in info.get("layers") or [] if not layer["mtp"]]
    if not layers:
        return {
            "layer_pattern": item(expected_counts, "not determined",
                                  f"from config.json layer_types, not from the built model{why}"),
            "full_attention_layers": item([i for i, t in enumerate(expected) if t == "full_attention"],
                                          "not determined", "from config.json, not the built model"),
        }
    layers.sort(key=lambda layer: (layer["index"] is None, layer["index"]))
    built = [layer["kind"] for layer in layers]
    counts = dict(Counter(built))
    match = built == expected
    return {
        "layer_pattern": item(
            counts, "ok" if match else "failed",
            "counted on the model vLLM built (worker): decoder layers with linear_attn vs self_attn"
            + ("; matches config layer_types" if match else f"; config layer_types says {expected_counts}"),
        ),
        "full_attention_layers": item([layer["index"] for layer in layers if layer["kind"] == "full_attention"],
                                      "ok" if match else "failed", "indices in the built model"),
    }


def gdn_item(info, platform: str, why: str):
    """Which GDN code is bound and which ran: the functions bound on the layer class and in the modules it calls
    (a plugin such as vllm-ascend rebinds methods of vLLM's class and swaps its kernels, leaving vLLM's class
    name and dispatch attributes in place), and the calls counted in the worker since the engine started."""
    layers = info.get("gdn_layers")
    if layers is None:
        return item(None, "not determined", f"no worker introspection{why}")
    if not layers:
        return item(None, "not determined", "the built model has no linear-attention (GDN) layers")
    keys = ("class", "forward", "forward_bound", "prefill_backend", "decode_kernel", "chunk_rule_class",
            "chunk_rule_forward")
    variants = {json.dumps({k: layer.get(k) for k in keys}, sort_keys=True) for layer in layers}
    first = layers[0]
    bindings = (info.get("gdn_bindings") or {}).get(first["class"]) or {}
    counted = info.get("gdn_counts") or {}
    counts = {name: n for name, n in (counted.get("counts") or {}).items() if n}
    kernels = bindings.get("kernels") or {}
    value = {
        "class": first["class"],
        "forward": first.get("forward_bound") or first["forward"],
        "class_forward": (bindings.get("forward_methods") or {}).get("forward"),
        "kernels": kernels,
        "foreign_bindings": bindings.get("foreign") or {},
        "ran": counts if counted.get("installed") else None,
        "dispatch_attributes": {k: first.get(k) for k in
                                ("prefill_backend", "decode_kernel", "chunk_rule_class", "chunk_rule_forward")},
    }
    if platform == "cpu" and (value["forward"] or "").endswith("forward_cpu") and not value["foreign_bindings"]:
        value["kind"] = "vLLM CPU GDN op (torch.ops.vllm.cpu_gdn_attention_core)"
    where = f"read from all {len(layers)} GDN layers of the built model"
    if len(variants) != 1:
        return item(value, "failed", f"{where}; layers differ: {len(variants)} variants")
    if not bindings:
        return item(value, "not determined", f"the GDN class's bindings could not be read{why}; "
                    "the dispatch attributes alone do not say which code runs")
    if not counted.get("installed"):
        return item(value, "ok", f"{where}: what is bound now (own module.qualname of each function), not what ran: "
                    f"calls not counted ({counted.get('reason', 'no counters')})")
    if counts:
        return item(value, "ok", f"{where}; 'ran': calls counted in the worker since the engine started "
                    f"(eager mode), by the called function's own module.qualname")
    return item(value, "ok", f"{where}: what is bound now, not what ran: no GDN forward or kernel call counted since "
                "the engine started (no forward pass yet, or only torch ops / triton kernels ran, which are not "
                "counted)")


def attention_item(info, why: str):
    layers = info.get("attention_layers")
    if not layers:
        return item(None, "not determined", f"no attention layers found{why}")
    first = layers[0]
    return item({"backend": first["backend"], "backend_class": first.get("backend_class"), "impl": first["impl"],
                 "kv_cache_dtype": first["kv_cache_dtype"]},
                "ok", f"read from {len(layers)} full-attention layers of the built model (backend: get_name(), "
                "which a plugin's backend may share with vLLM's; backend_class: its module.qualname)")


def checkpoint_items(info, model_dir: Path, vllm_config, language_model_only: bool, why: str):
    """MTP and vision weights: present in the checkpoint's safetensors, loaded into the built model."""
    items = {}
    try:
        keys = _safetensors_keys(model_dir)
    except Exception as exc:  # noqa: BLE001
        keys, error = None, f"{type(exc).__name__}: {exc}"
    from portcheck.model.checkpoint import tensor_part

    if keys is None:
        items["mtp_weights_present"] = item(None, "not determined", f"cannot read safetensors headers: {error}")
        items["vision_weights_present"] = item(None, "not determined", f"cannot read safetensors headers: {error}")
    else:
        parts = Counter(tensor_part(k) for k in keys)
        items["mtp_weights_present"] = item(parts["mtp"] > 0, "ok",
                                            f"{parts['mtp']} mtp.* tensors in the checkpoint")
        items["vision_weights_present"] = item(parts["vision"] > 0, "ok",
                                               f"{parts['vision']} vision tensors in the checkpoint")
    spec = getattr(vllm_config, "speculative_config", None)
    mtp = info.get("mtp")
    if mtp is None:
        items["mtp_loaded"] = item(None, "not determined", f"no worker introspection{why}")
    else:
        loaded = mtp["modules"] > 0 or mtp["drafter"] is not None
        items["mtp_loaded"] = item(
            loaded, "ok",
            (f"MTP modules in the worker: {mtp['modules']}, drafter {mtp['drafter']}" if loaded else
             "no MTP module in the built model: no speculative decoding configured "
             f"(speculative_config={spec}), and vLLM maps mtp.* checkpoint weights to nothing"),
        )
    vision = info.get("vision")
    if vision is None:
        items["vision_loaded"] = item(None, "not determined", f"no worker introspection{why}")
    else:
        loaded = bool(vision["parameters"]) and not (vision["class"] or "").endswith("StageMissingLayer")
        reason = "language_model_only=True" if language_model_only else "the architecture has none"
        items["vision_loaded"] = item(
            loaded, "ok",
            f"vision tower {vision['class']} with {vision['parameters']} parameters in the built model" if loaded
            else f"vision tower skipped ({reason}); built as {vision['class']}",
        )
    return items


def _safetensors_keys(model_dir: Path) -> list[str]:
    from portcheck.model.checkpoint import read_safetensors_header, weight_files

    return [name for file in weight_files(model_dir) for name in read_safetensors_header(file)]


def state_dtype_item(info, cache_config, text_config: dict, why: str):
    configured = {
        "cache_config.mamba_ssm_cache_dtype": getattr(cache_config, "mamba_ssm_cache_dtype", None),
        "cache_config.mamba_cache_dtype": getattr(cache_config, "mamba_cache_dtype", None),
        "config.json mamba_ssm_dtype": text_config.get("mamba_ssm_dtype"),
    }
    layers = info.get("gdn_layers") or []
    tensors = layers[0]["state_tensors"] if layers else []
    if len(tensors) >= 2:
        value = {"conv_state": tensors[0]["dtype"], "ssm_state": tensors[1]["dtype"]}
        return item(value, "ok", "dtypes of the state tensors bound to the GDN layers in the worker; "
                    f"configured: {configured}")
    if layers and layers[0].get("state_dtype_declared"):
        declared = layers[0]["state_dtype_declared"]
        return item({"conv_state": declared[0], "ssm_state": declared[-1]}, "not determined",
                    f"state tensors not bound; the layer's get_state_dtype() says so; configured: {configured}")
    return item(None, "not determined", f"no GDN state found in the worker{why}; configured: {configured}")


def kv_items(cache_config, logged: dict, no_log: str, max_model_len: int):
    """kv_cache_tokens and max_concurrency from vLLM's cache config, else from its log."""
    tokens = getattr(cache_config, "kv_cache_size_tokens", None)
    concurrency = getattr(cache_config, "kv_cache_max_concurrency", None)
    blocks = getattr(cache_config, "num_gpu_blocks", None)
    block_size = getattr(cache_config, "block_size", None)
    detail = f"num_gpu_blocks={blocks} x block_size={block_size}"
    hybrid_note = ("; vLLM's group-aware figure (max concurrency x max_model_len): on a hybrid model the blocks "
                   f"are shared by the attention and GDN-state groups, so {detail} over-counts tokens")
    items = {}
    if tokens is not None:
        agrees = "kv_cache_tokens" not in logged or int(logged["kv_cache_tokens"]) == int(tokens)
        items["kv_cache_tokens"] = item(int(tokens), "ok" if agrees else "failed",
                                        "cache_config.kv_cache_size_tokens" + hybrid_note
                                        + ("" if agrees else f"; the log says {int(logged['kv_cache_tokens'])}"))
    elif "kv_cache_tokens" in logged:
        items["kv_cache_tokens"] = item(int(logged["kv_cache_tokens"]), "ok", "read from vLLM's log; " + detail)
    else:
        items["kv_cache_tokens"] = item(None, "not determined", f"not on cache_config and {no_log}; {detail}")
    if concurrency is not None:
        items["max_concurrency"] = item(
            round(float(concurrency), 2), "ok",
            f"cache_config.kv_cache_max_concurrency: requests of max_model_len={max_model_len} tokens that fit",
        )
    elif "max_concurrency" in logged:
        items["max_concurrency"] = item(logged["max_concurrency"], "ok", "read from vLLM's log")
    else:
        items["max_concurrency"] = item(None, "not determined", f"not on cache_config and {no_log}")
    return items
