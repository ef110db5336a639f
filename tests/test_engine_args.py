"""The serving check cannot run other settings than the dump: the `vllm serve` command, parsed by vLLM's own
serve parser, gives the engine arguments the offline engine passes to vllm.LLM. No engine starts here."""

from __future__ import annotations

import pytest

from portcheck.benchmarks.serving import server_args
from portcheck.engines.settings import EngineSettings
from portcheck.engines.vllm.engine_args import (
    CPU_DEFAULT_GPU_MEMORY_UTILIZATION, WORKER_EXTENSION_CLS, engine_arguments, engine_env, llm_kwargs, offline_env,
    runs_in_process,
)
from portcheck.targets import parse_target

MODEL_DIR = "/models/tiny"
# What only the offline engine is given: scoring's log-prob cap, the worker extension, its log config, its process
# layout (in-process: the "uni" executor).
OFFLINE_ONLY = {"max_logprobs", "worker_extension_cls", "log_config_file", "distributed_executor_backend"}
CASES = {
    "defaults": ("cpu-vllm-bf16", EngineSettings()),
    "cpu without a memory setting": ("cpu-vllm-fp32", EngineSettings(seed=7, max_model_len=256, enforce_eager=False)),
    "npu batching": ("npu-vllm-bf16", EngineSettings(max_num_batched_tokens=4096, max_num_seqs=16,
                                                     trust_remote_code=True, language_model_only=False)),
    "vllm_kwargs override": ("gpu-vllm-fp16", EngineSettings(max_num_seqs=8, extra={"vllm_kwargs": {
        "max_num_seqs": 4, "gpu_memory_utilization": 0.5, "enable_prefix_caching": True, "max_logprobs": -1,
        "hf_overrides": {"rope_theta": 1000.0}}})),
}


@pytest.fixture(scope="module")
def serve_parser():
    """The parser `vllm serve` parses its arguments with (its subcommand parser is built by make_arg_parser, in
    vllm.entrypoints.launchers.cli_args from the 0.32 line, vllm.entrypoints.openai.cli_args before)."""
    import importlib

    from vllm.utils.argparse_utils import FlexibleArgumentParser

    for module in ("vllm.entrypoints.launchers.cli_args", "vllm.entrypoints.openai.cli_args"):
        try:
            make_arg_parser = importlib.import_module(module).make_arg_parser
            break
        except ModuleNotFoundError:
            continue

    return make_arg_parser(FlexibleArgumentParser())


def served_engine_args(parser, command: list[str]):
    """The EngineArgs `vllm serve <command>` builds, as its serve subcommand does."""
    from vllm.engine.arg_utils import AsyncEngineArgs

    assert command[0] == "serve"
    args = parser.parse_args(command[1:])
    args.model = args.model_tag
    return AsyncEngineArgs.from_cli_args(args)


def mismatches(parser, command: list[str], expected: dict) -> dict:
    """field -> (vllm.LLM's value, the server's value) for each field where they differ."""
    served = served_engine_args(parser, command)
    return {name: (value, getattr(served, name)) for name, value in expected.items()
            if getattr(served, name) != value}


def offline_arguments(target_name: str, settings: EngineSettings) -> dict:
    """What vllm.LLM is given for each field of the mapping; only OFFLINE_ONLY fields are left out."""
    target = parse_target(target_name)
    offline = llm_kwargs(target, MODEL_DIR, settings, log_config_file="/tmp/logging.json")
    mapped = engine_arguments(target, MODEL_DIR, settings)
    assert set(offline) - set(mapped) <= OFFLINE_ONLY
    return {name: offline[name] for name in mapped}


@pytest.mark.parametrize("case", CASES)
def test_the_served_engine_gets_the_offline_engines_arguments(serve_parser, case):
    target_name, settings = CASES[case]
    command = server_args(target_name, MODEL_DIR, settings, port=8123)
    assert mismatches(serve_parser, command, offline_arguments(target_name, settings)) == {}


def test_the_mapping_holds_the_defaults_once():
    cpu = llm_kwargs(parse_target("cpu-vllm-bf16"), MODEL_DIR, EngineSettings())
    assert cpu["gpu_memory_utilization"] == CPU_DEFAULT_GPU_MEMORY_UTILIZATION
    assert cpu["enable_prefix_caching"] is False and cpu["worker_extension_cls"] == WORKER_EXTENSION_CLS
    assert "gpu_memory_utilization" not in llm_kwargs(parse_target("gpu-vllm-bf16"), MODEL_DIR, EngineSettings())
    overridden = EngineSettings(logprobs_topk=5, extra={"vllm_kwargs": {"max_logprobs": -1}})
    assert llm_kwargs(parse_target("cpu-vllm-bf16"), MODEL_DIR, overridden)["max_logprobs"] == -1


@pytest.mark.parametrize("dropped", [("--gpu-memory-utilization", "0.3"), ("--no-enable-prefix-caching",)])
def test_a_dropped_flag_is_caught(serve_parser, dropped):
    """Fault injection: a serve command missing one flag of the mapping no longer matches the offline engine."""
    command = server_args("cpu-vllm-bf16", MODEL_DIR, EngineSettings(), port=8123)
    start = command.index(dropped[0])
    assert command[start:start + len(dropped)] == list(dropped)
    broken = command[:start] + command[start + len(dropped):]
    field = dropped[0].removeprefix("--no-").removeprefix("--").replace("-", "_")
    assert set(mismatches(serve_parser, broken, offline_arguments("cpu-vllm-bf16", EngineSettings()))) == {field}


@pytest.mark.parametrize(("target_name", "in_process", "version", "expected"), [
    ("cpu-vllm-bf16", None, "0.32.0", True), ("cpu-vllm-bf16", None, "0.23.0+cpu", True),
    ("cpu-vllm-bf16", None, "0.18.0", False), ("cpu-vllm-bf16", None, None, False),
    ("gpu-vllm-bf16", None, "0.32.0", False), ("npu-vllm-bf16", None, "0.18.0", False),
    ("cpu-vllm-bf16", False, "0.32.0", False), ("npu-vllm-bf16", True, "0.18.0", True),
])
def test_in_process_is_the_cpu_default_from_vllm_0_23_and_a_setting(target_name, in_process, version, expected,
                                                                     monkeypatch):
    """In-process: the offline engine's worker joins its core ("uni") and the core runs in the caller (its
    environment); the served engine's arguments and environment are not touched."""
    monkeypatch.delenv("VLLM_CPU_OMP_THREADS_BIND", raising=False)
    target, settings = parse_target(target_name), EngineSettings(in_process=in_process)
    assert runs_in_process(target.device, settings, version) is expected
    offline = llm_kwargs(target, MODEL_DIR, settings, in_process=expected)
    assert offline.get("distributed_executor_backend") == ("uni" if expected else None)
    assert offline_env(target.device, settings, expected).get("VLLM_ENABLE_V1_MULTIPROCESSING") == (
        "0" if expected else None)
    assert "distributed_executor_backend" not in engine_arguments(target, MODEL_DIR, settings)
    assert "VLLM_ENABLE_V1_MULTIPROCESSING" not in engine_env(target.device, settings)
    explicit = EngineSettings(extra={"vllm_kwargs": {"distributed_executor_backend": "mp"}})
    assert llm_kwargs(target, MODEL_DIR, explicit, in_process=True)["distributed_executor_backend"] == "mp"


@pytest.mark.parametrize(("device", "kv_bytes", "env_only", "already", "expected"), [
    ("cpu", 512 * 1024**2, True, None, "1"), ("cpu", 3 * 1024**3 + 1, True, None, "4"),
    ("cpu", 512 * 1024**2, False, None, None), ("cpu", None, True, None, None),
    ("cpu", 512 * 1024**2, True, "6", None), ("npu", 512 * 1024**2, True, None, None),
])
def test_a_vllm_that_reads_only_its_kv_space_variable_gets_the_same_kv_cache_size(device, kv_bytes, env_only,
                                                                                  already, expected, monkeypatch):
    """vLLM CPU 0.18 ignores kv_cache_memory_bytes and takes VLLM_CPU_KVCACHE_SPACE (whole GiB, rounded up here),
    else half the host's RAM: the explicit size reaches it there, unless the variable is set already (the user's)."""
    from portcheck.engines.vllm import engine_args

    monkeypatch.setattr(engine_args, "kv_space_from_env_only", lambda: env_only)
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    if already:
        monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", already)
    assert engine_env(device, EngineSettings(), kv_bytes).get("VLLM_CPU_KVCACHE_SPACE") == expected
    assert offline_env(device, EngineSettings(), True, kv_bytes).get("VLLM_CPU_KVCACHE_SPACE") == expected


@pytest.mark.parametrize(("line", "env_only"), [("0.18", True), ("0.32", False), (None, False)])
def test_which_vllm_reads_only_its_kv_space_variable_is_read_from_its_cache_config(line, env_only, tmp_path,
                                                                                   monkeypatch):
    """Feature detection on vLLM's own source, laid out as each line ships it (0.18's CacheConfig keeps
    cpu_kvcache_space_bytes; 0.32's does not); no vLLM installed: False."""
    import importlib.util
    from types import SimpleNamespace

    from portcheck.engines.vllm import engine_args

    fields = {"0.18": "    cpu_kvcache_space_bytes: int | None = None\n",
              "0.32": "    kv_cache_memory_bytes: int | None = None\n"}
    if line:
        (tmp_path / "vllm" / "config").mkdir(parents=True)
        (tmp_path / "vllm" / "config" / "cache.py").write_text(f"class CacheConfig:\n{fields[line]}")
    spec = SimpleNamespace(submodule_search_locations=[str(tmp_path / "vllm")]) if line else None
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: spec if name == "vllm" else None)
    engine_args.kv_space_from_env_only.cache_clear()
    try:
        assert engine_args.kv_space_from_env_only() is env_only
    finally:
        engine_args.kv_space_from_env_only.cache_clear()
