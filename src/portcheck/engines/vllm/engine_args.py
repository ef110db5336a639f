"""The one mapping from a target's settings to vLLM's engine arguments (`engine_arguments`), and its two
renderings: keyword arguments of `vllm.LLM` for the offline engine (`llm_kwargs`) and flags of `vllm serve` for
the serving check (`serve_cli_args`). Both come from the same dict, so the server cannot run other settings than
the engine that wrote the dump. Import-light: no vllm import."""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from pathlib import Path
from typing import Any

from portcheck.engines.settings import EngineSettings
from portcheck.engines.vllm import cpu_memory, worker_extension

# On cpu, gpu_memory_utilization is the share of host RAM vLLM reserves (weights + KV cache); its default 0.92
# fails to start on a 24 GiB host, 0.3 works (reference.md section 4); engines/vllm/cpu_memory.py sizes and checks it.
CPU_DEFAULT_GPU_MEMORY_UTILIZATION = cpu_memory.DEFAULT_SHARE
# Imported, not only named: vLLM's worker loads it by this dotted path, and the import makes it a code input of the
# rules that start the engine (editing it reruns them).
WORKER_EXTENSION_CLS = f"{worker_extension.__name__}.{worker_extension.PortcheckWorkerExtension.__qualname__}"


@functools.lru_cache(maxsize=1)
def engine_fields() -> frozenset[str]:
    """The EngineArgs fields the installed vLLM accepts: fields come and go across vLLM lines, so what is passed
    is checked against them (feature detection) rather than assumed from one version."""
    from vllm.engine.arg_utils import EngineArgs

    return frozenset(field.name for field in dataclasses.fields(EngineArgs))


def unknown_arguments(kwargs: dict[str, Any], accepted: frozenset[str]) -> list[str]:
    """The keys of `kwargs` this vLLM's EngineArgs has no field for (it would raise TypeError at the start)."""
    return sorted(set(kwargs) - accepted)


def engine_arguments(target, model_dir: str | Path, settings: EngineSettings) -> dict[str, Any]:
    """vLLM EngineArgs field name -> value for the target's settings; settings.extra["vllm_kwargs"] wins."""
    arguments: dict[str, Any] = {
        "model": str(model_dir),
        "dtype": target.torch_dtype_name,
        "seed": settings.seed,
        "trust_remote_code": bool(settings.trust_remote_code),
        "enforce_eager": bool(settings.enforce_eager),
        "language_model_only": bool(settings.language_model_only),
        # numerics stay reproducible: a prefix-cache read changes the computation path
        "enable_prefix_caching": False,
    }
    optional = {
        "max_model_len": settings.max_model_len,
        "gpu_memory_utilization": settings.gpu_memory_utilization,
        "max_num_batched_tokens": settings.max_num_batched_tokens,
        "max_num_seqs": settings.max_num_seqs,
    }
    if target.device == "cpu":  # refused here, before an engine or server starts, when it cannot hold the model
        need = cpu_memory.memory_need(model_dir, target.dtype, settings.max_model_len)
        total, available = cpu_memory.host_memory()
        share = cpu_memory.cpu_memory_share(need, settings.gpu_memory_utilization, total, available,
                                            target=target.name)
        optional["gpu_memory_utilization"] = share
        if settings.gpu_memory_utilization is None:  # a configured share is the user's sizing, left to vLLM
            optional["kv_cache_memory_bytes"] = cpu_memory.kv_cache_bytes(need, share, total, settings.max_num_seqs)
    arguments.update({k: v for k, v in optional.items() if v is not None})
    arguments.update(settings.extra.get("vllm_kwargs") or {})
    return arguments


def llm_kwargs(target, model_dir: str | Path, settings: EngineSettings,
               log_config_file: str | None = None, in_process: bool = False) -> dict[str, Any]:
    """engine_arguments plus what only the offline engine needs: prompt log-probs up to logprobs_topk (-1: the
    full vocabulary), the worker extension it introspects through, its log config, and in-process the worker in the
    engine core (the "uni" executor; offline_env puts the core in this process). vllm_kwargs still win."""
    kwargs = engine_arguments(target, model_dir, settings)
    topk = settings.logprobs_topk
    offline = {"max_logprobs": -1 if topk == -1 else max(int(topk), 1), "worker_extension_cls": WORKER_EXTENSION_CLS}
    if in_process:
        offline["distributed_executor_backend"] = "uni"
    if log_config_file:
        offline["log_config_file"] = log_config_file
    for key, value in offline.items():
        kwargs.setdefault(key, value)
    return kwargs


def serve_cli_args(target, model_dir: str | Path, settings: EngineSettings) -> list[str]:
    """engine_arguments as `vllm serve` arguments: the model positional, then each field as --field-name value;
    booleans as --field-name / --no-field-name, dicts as JSON, lists as one value each."""
    arguments = engine_arguments(target, model_dir, settings)
    args = [arguments.pop("model")]
    for name, value in arguments.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            args.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, dict):
            args += [flag, json.dumps(value)]
        elif isinstance(value, (list, tuple)):
            args += [flag, *map(str, value)]
        else:
            args += [flag, str(value)]
    return args


# The oldest vLLM line whose CPU engine runs in-process here (0.23 and 0.32 measured; 0.18's in-process engine was
# killed for memory on a 24 GiB host, where its own processes run).
IN_PROCESS_MIN_VLLM = (0, 23)


def runs_in_process(device: str, settings: EngineSettings, vllm_version: str | None) -> bool:
    """Whether the offline engine's core and worker run in the caller's process (settings.in_process; None: on cpu
    from vLLM 0.23 on, where starting vLLM's two processes took ~30 of an engine start's ~40 s here; off on gpu and
    npu, vLLM's default there, where a device fault then does not take the caller's process with it)."""
    if settings.in_process is not None:
        return bool(settings.in_process)
    return device == "cpu" and _release(vllm_version) >= IN_PROCESS_MIN_VLLM


def _release(version: str | None) -> tuple[int, ...]:
    """(major, minor) of a version string such as "0.32.0+cpu"; (0, 0) when unknown."""
    parts = (version or "").split("+")[0].split(".")[:2]
    return tuple(int(p) for p in parts) if len(parts) == 2 and all(p.isdigit() for p in parts) else (0, 0)


def offline_env(device: str, settings: EngineSettings, in_process: bool,
                kv_bytes: int | None = None) -> dict[str, str]:
    """engine_env plus, in-process, the offline engine's core in this process (`vllm serve` always keeps its own
    processes: the server is a separate program either way)."""
    env = engine_env(device, settings, kv_bytes)
    if in_process:
        env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    return env


def engine_env(device: str, settings: EngineSettings, kv_bytes: int | None = None) -> dict[str, str]:
    """Environment variables the settings map to: settings.threads pins vLLM's CPU OpenMP threads to the first
    CPUs of this process's affinity (unless VLLM_CPU_OMP_THREADS_BIND is already set); kv_bytes (the
    kv_cache_memory_bytes of engine_arguments) also sizes the KV cache of a vLLM whose CPU worker reads only
    VLLM_CPU_KVCACHE_SPACE (whole GiB; unless already set)."""
    env = {}
    if device == "cpu" and settings.threads and "VLLM_CPU_OMP_THREADS_BIND" not in os.environ:
        cpus = sorted(os.sched_getaffinity(0))[: int(settings.threads)]
        env["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(map(str, cpus))
    if device == "cpu" and kv_bytes and "VLLM_CPU_KVCACHE_SPACE" not in os.environ and kv_space_from_env_only():
        env["VLLM_CPU_KVCACHE_SPACE"] = str(math.ceil(kv_bytes / cpu_memory.GIB))
    return env


@functools.lru_cache(maxsize=1)
def kv_space_from_env_only() -> bool:
    """Whether the installed vLLM's CPU worker sizes its KV cache from VLLM_CPU_KVCACHE_SPACE alone, else half the
    host's RAM, whatever kv_cache_memory_bytes says: 0.18, whose CacheConfig keeps cpu_kvcache_space_bytes for the
    worker to return (0.23 and 0.32 dropped the field and honour kv_cache_memory_bytes). Read from vLLM's source
    file, not imported: the serving and accuracy jobs do not import vLLM (~10 s)."""
    import importlib.util

    spec = importlib.util.find_spec("vllm")
    if spec is None or not spec.submodule_search_locations:  # no vLLM here: its server sizes the cache itself
        return False
    source = Path(next(iter(spec.submodule_search_locations))) / "config" / "cache.py"
    try:
        return "cpu_kvcache_space_bytes:" in source.read_text(encoding="utf-8")
    except OSError:
        return False


def server_env(target, model_dir: str | Path, settings: EngineSettings) -> dict[str, str]:
    """engine_env for `vllm serve` on the same settings as the offline engine (its KV cache sized the same)."""
    kv_bytes = engine_arguments(target, model_dir, settings).get("kv_cache_memory_bytes")
    return engine_env(target.device, settings, kv_bytes)
