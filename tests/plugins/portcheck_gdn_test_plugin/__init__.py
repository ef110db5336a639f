"""A vLLM general plugin for the tests: patches vLLM's GDN layer the way vllm-ascend does, without replacing its
class: it rebinds a forward-family method of QwenGatedDeltaNetAttention and swaps a module-level GDN kernel, each
to a function of this module that calls the original. Active only with PORTCHECK_GDN_TEST_PLUGIN=1 (vLLM loads
every general plugin it finds unless VLLM_PLUGINS says otherwise); unpatch() restores vLLM.

With PORTCHECK_GDN_TEST_NOISE_LAYER=N the rebound forward is also a broken kernel in decoder layer N: it adds
seeded Gaussian noise (the output's own standard deviation) to that GDN layer's output. With
PORTCHECK_GDN_TEST_DROP_INITIAL_STATE=1 the swapped kernel is a prefill that ignores the state it should start
from (the class of bug vllm-ascend had in its fused prefill): a prefill split into chunks, or one that starts from
a prefix-cache hit, loses everything before its chunk; a prefill in one piece and the decode steps are exact.
With PORTCHECK_GDN_TEST_BATCH_NOISE=N the rebound forward is a kernel that is wrong only when 3 to N tokens share a
pass (a decode step of 3 to N sequences: the class of bug a batch-size-dependent kernel choice makes): it adds
noise of a tenth of the output's standard deviation there; one sequence alone and long prefills are exact."""

from __future__ import annotations

import os

_ORIGINALS: dict = {}


def forward_cpu(self, hidden_states, *out):
    """vLLM 0.32's forward_cpu returns the output; 0.23's writes it into its `output` argument."""
    result = _ORIGINALS["forward_cpu"](self, hidden_states, *out)
    output = out[0] if out else result
    noisy = os.environ.get("PORTCHECK_GDN_TEST_NOISE_LAYER")
    noisy = noisy is not None and f"layers.{noisy}." in f"{self.prefix}."
    batch_noise = os.environ.get("PORTCHECK_GDN_TEST_BATCH_NOISE")
    scale = 1.0 if noisy else 0.1 if batch_noise and 2 < hidden_states.shape[0] <= int(batch_noise) else 0.0
    if scale == 0.0:
        return result
    import torch

    seed = 0 if noisy else hidden_states.shape[0]
    noise = torch.randn(output.shape, generator=torch.Generator().manual_seed(seed))
    spoiled = output + (noise * scale * output.float().std()).to(output.dtype)
    if out:
        output.copy_(spoiled)
        return result
    return spoiled


# The module-level kernel of vLLM's CPU GDN op that is swapped, the first this vLLM line has: the prefill of the 0.32
# line (the initial-state fault needs it), the causal conv1d that the 0.23 line's op calls.
KERNEL_SLOTS = ("_cpu_gdn_attention_nonspec", "causal_conv1d_torch")


def kernel_slot() -> str:
    from vllm.model_executor.layers.mamba.ops.cpu import gdn_attention

    return next(name for name in KERNEL_SLOTS if hasattr(gdn_attention, name))


def swapped_kernel(*args, **kwargs):
    slot = next(iter(_ORIGINALS["kernel"]))
    if slot == "_cpu_gdn_attention_nonspec" and os.environ.get("PORTCHECK_GDN_TEST_DROP_INITIAL_STATE") == "1":
        attn_metadata = args[1]
        if attn_metadata.num_prefills > 0:
            attn_metadata.has_initial_state[:] = False
    return _ORIGINALS["kernel"][slot](*args, **kwargs)


def register() -> None:
    if os.environ.get("PORTCHECK_GDN_TEST_PLUGIN") != "1" or _ORIGINALS:
        return
    from vllm.model_executor.layers.mamba.gdn import qwen_gdn_linear_attn
    from vllm.model_executor.layers.mamba.ops.cpu import gdn_attention

    cls = qwen_gdn_linear_attn.QwenGatedDeltaNetAttention
    slot = kernel_slot()
    _ORIGINALS["forward_cpu"] = cls.forward_cpu
    _ORIGINALS["kernel"] = {slot: getattr(gdn_attention, slot)}
    cls.forward_cpu = forward_cpu
    setattr(gdn_attention, slot, swapped_kernel)


def unpatch() -> None:
    if not _ORIGINALS:
        return
    from vllm.model_executor.layers.mamba.gdn import qwen_gdn_linear_attn
    from vllm.model_executor.layers.mamba.ops.cpu import gdn_attention

    qwen_gdn_linear_attn.QwenGatedDeltaNetAttention.forward_cpu = _ORIGINALS.pop("forward_cpu")
    for slot, original in _ORIGINALS.pop("kernel").items():
        setattr(gdn_attention, slot, original)
