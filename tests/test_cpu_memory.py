"""vLLM CPU's memory share sized from the checkpoint and max_model_len, refused before the engine starts with the
setting and a value that works (issue 8 finding 11). Figures by hand from cpu_memory's measured model: 1 GiB of
runtime + 2 x weights + KV per token (2 x KV heads x head dim x 2 bytes per full-attention layer) x max_model_len."""

from __future__ import annotations

import json

import pytest

from portcheck.engines.settings import EngineSettings
from portcheck.engines.vllm import cpu_memory, engine_args
from portcheck.errors import PortcheckError
from portcheck.targets import parse_target

GIB = 1024**3
REAL_WEIGHTS = 1_504_827_608  # bytes of the real text shape's bf16 safetensors (random weights, measured)


def checkpoint(tmp_path, text: dict, weight_bytes: int):
    (tmp_path / "config.json").write_text(json.dumps({"text_config": text}))
    with open(tmp_path / "model.safetensors", "wb") as handle:  # sparse: the size is what is read
        handle.truncate(weight_bytes)
    return tmp_path


@pytest.fixture
def real_shape(tmp_path):
    text = {"num_hidden_layers": 24, "num_key_value_heads": 2, "head_dim": 256, "num_attention_heads": 8,
            "hidden_size": 1024, "max_position_embeddings": 262144,
            "layer_types": ["linear_attention"] * 3 + ["full_attention"]}
    text["layer_types"] *= 6
    return checkpoint(tmp_path, text, REAL_WEIGHTS)


@pytest.fixture
def tiny_shape(tmp_path):
    """The embedded model's text shape: 8 layers, 2 of them full attention, GDN with 2 heads of 64."""
    text = {"num_hidden_layers": 8, "num_key_value_heads": 2, "head_dim": 64, "max_position_embeddings": 512,
            "linear_num_key_heads": 2, "linear_num_value_heads": 2, "linear_key_head_dim": 64,
            "linear_value_head_dim": 64, "linear_conv_kernel_dim": 4,
            "layer_types": (["linear_attention"] * 3 + ["full_attention"]) * 2}
    (tmp_path / "tiny").mkdir()
    return checkpoint(tmp_path / "tiny", text, 6_791_488)


def test_need_from_the_checkpoint(real_shape):
    need = cpu_memory.memory_need(real_shape, "bf16", 4096)
    assert need.kv_bytes_per_token == 6 * 2 * 2 * 256 * 2 == 12288
    assert need.non_kv_bytes == GIB + 2 * REAL_WEIGHTS
    assert need.total_bytes == GIB + 2 * REAL_WEIGHTS + 12288 * 4096
    assert cpu_memory.memory_need(real_shape, "bf16", None).max_model_len == 262144  # the model's own length
    assert cpu_memory.memory_need(real_shape, "fp32", 4096).weight_bytes == 2 * REAL_WEIGHTS
    assert cpu_memory.memory_need(real_shape / "nowhere", "bf16", 4096) is None


def test_unset_share_is_the_default_raised_to_the_need(real_shape):
    need = cpu_memory.memory_need(real_shape, "bf16", None)  # 6.80 GiB; x 1.1 = 7.48 GiB
    assert cpu_memory.cpu_memory_share(cpu_memory.memory_need(real_shape, "bf16", 4096), None, 24 * GIB, 22 * GIB) == 0.3
    assert cpu_memory.cpu_memory_share(need, None, 24 * GIB, 22 * GIB) == 0.35  # 7.48 / 24 = 0.312 -> 0.35
    assert cpu_memory.cpu_memory_share(need, None, 16 * GIB, 14 * GIB) == 0.5  # 7.48 / 16 = 0.468 -> 0.5
    assert cpu_memory.cpu_memory_share(need, None, 8 * GIB, 7.5 * GIB) == 0.9  # 0.95 wanted, 0.9 free, 7.2 > 6.80
    assert cpu_memory.cpu_memory_share(None, None, 8 * GIB, 7 * GIB) == cpu_memory.DEFAULT_SHARE


def test_a_share_too_small_names_the_setting_and_a_value_that_works(real_shape):
    need = cpu_memory.memory_need(real_shape, "bf16", None)
    with pytest.raises(PortcheckError, match=r"targets\.cpu-vllm-bf16\.gpu_memory_utilization .* 0\.2 reserves "
                                             r"4\.80 GiB .* needs ~6\.80 GiB.*; set it to 0\.35 or lower max_model_len"):
        cpu_memory.cpu_memory_share(need, 0.2, 24 * GIB, 22 * GIB)
    assert cpu_memory.cpu_memory_share(need, 0.3, 24 * GIB, 22 * GIB) == 0.3  # 7.2 GiB holds 6.80: as configured


def test_a_busy_host_names_what_fits(real_shape):
    need = cpu_memory.memory_need(real_shape, "bf16", None)
    with pytest.raises(PortcheckError, match=r"0\.5 would reserve 12\.00 GiB but 9\.00 GiB .* is free.*set it to 0\.35"):
        cpu_memory.cpu_memory_share(need, 0.5, 24 * GIB, 9 * GIB)
    # 6 GiB free of 8: 0.75 x 8 = 6 GiB - 3.80 GiB before the KV cache = 2.20 GiB / 12,288 B = 191,488 (1,024 steps)
    with pytest.raises(PortcheckError, match=r"lower max_model_len to 191,488 or less"):
        cpu_memory.cpu_memory_share(need, None, 8 * GIB, 6 * GIB)


def test_the_engine_and_the_server_are_refused_before_they_start(real_shape, monkeypatch):
    monkeypatch.setattr(cpu_memory, "host_memory", lambda: (24 * GIB, 22 * GIB))
    target = parse_target("cpu-vllm-bf16")
    assert engine_args.llm_kwargs(target, real_shape, EngineSettings(max_model_len=4096))["gpu_memory_utilization"] == 0.3
    small = EngineSettings(max_model_len=None, gpu_memory_utilization=0.1)
    for render in (engine_args.llm_kwargs, engine_args.serve_cli_args):
        with pytest.raises(PortcheckError, match="set it to 0.35"):
            render(target, real_shape, small)
    # other devices are vLLM's own business (their share is of device memory, profiled by vLLM)
    assert engine_args.llm_kwargs(parse_target("gpu-vllm-bf16"), real_shape, small)["gpu_memory_utilization"] == 0.1


def test_an_unset_share_sizes_the_kv_cache_for_max_num_seqs_sequences(tiny_shape, real_shape):
    need = cpu_memory.memory_need(tiny_shape, "bf16", 512)
    # KV 2 layers x 2 (K, V) x 2 heads x 64 x 2 B = 1,024 B/token; GDN state 6 layers x (2 x 64 x 64 x 4 B recurrent
    # + (2 x 2 x 64 + 2 x 64) channels x 3 x 2 B conv) = 6 x 35,072 = 210,432 B a sequence
    assert need.kv_bytes_per_token == 1024 and need.state_bytes_per_sequence == 210_432
    per_sequence = 1024 * 512 + 210_432
    assert need.kv_bytes_for(256) == 2 * 256 * per_sequence == 376_176_640
    assert cpu_memory.kv_cache_bytes(need, 0.3, 24 * GIB, None) == 512 * 1024**2  # the floor: 359 MiB < 512 MiB
    assert cpu_memory.kv_cache_bytes(need, 0.3, 24 * GIB, 1024) == 2 * 1024 * per_sequence
    # 0.3 x 8 GiB - (1 GiB + 2 x 6,791,488 B) = 1,422,000,537 B, less than 1,504,706,560: the share sizes it
    assert cpu_memory.kv_cache_bytes(need, 0.3, 8 * GIB, 1024) is None
    # the real shape at 4,096 tokens: 2 x 256 x 50 MB > the 3.4 GiB the default share leaves: as before
    assert cpu_memory.kv_cache_bytes(cpu_memory.memory_need(real_shape, "bf16", 4096), 0.3, 24 * GIB, None) is None
    assert cpu_memory.kv_cache_bytes(None, 0.3, 24 * GIB, None) is None


def test_the_explicit_kv_cache_reaches_the_engine_and_the_server_only_for_an_unset_share(tiny_shape, monkeypatch):
    monkeypatch.setattr(cpu_memory, "host_memory", lambda: (24 * GIB, 22 * GIB))
    target = parse_target("cpu-vllm-bf16")
    unset = EngineSettings(max_model_len=512)
    assert engine_args.llm_kwargs(target, tiny_shape, unset)["kv_cache_memory_bytes"] == 512 * 1024**2
    served = engine_args.serve_cli_args(target, tiny_shape, unset)
    assert served[served.index("--kv-cache-memory-bytes") + 1] == str(512 * 1024**2)
    configured = EngineSettings(max_model_len=512, gpu_memory_utilization=0.3)
    assert "kv_cache_memory_bytes" not in engine_args.llm_kwargs(target, tiny_shape, configured)
    assert "kv_cache_memory_bytes" not in engine_args.llm_kwargs(parse_target("gpu-vllm-bf16"), tiny_shape, unset)
