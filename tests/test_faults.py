"""The fault plugin (issue 18 section 2): its switch, its arithmetic against hand-computed values, its hf hooks on
the tiny model, and that it refuses what it cannot inject rather than giving a clean run that counts as caught."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from portcheck.faults import catalog as faults
from portcheck.errors import PortcheckError
from portcheck.faults import hf_hooks, vllm_plugin


@pytest.fixture(autouse=True)
def unpatched():
    """Each test starts with vLLM unpatched (an engine started earlier in this process may have loaded the plugin)."""
    vllm_plugin.unpatch()
    yield
    vllm_plugin.unpatch()


def test_a_fault_is_parsed_with_its_default_place_and_bad_specs_name_the_format():
    assert faults.parse("layer_scale:0.05") == faults.Fault("layer_scale", 0.05, 4)
    assert faults.parse("rope_offset:8:200") == faults.Fault("rope_offset", 8.0, 200)
    assert str(faults.parse("state_decay:1")) == "state_decay:1"
    with pytest.raises(PortcheckError, match="unknown fault 'layer_scal'; one of state_dropped, state_decay"):
        faults.parse("layer_scal:0.1")
    with pytest.raises(PortcheckError, match=r"<name>:<magnitude>\[:<where>\]"):
        faults.parse("layer_scale:big")
    with pytest.raises(PortcheckError, match="state_decay takes no third field"):
        faults.parse("state_decay:0.5:3")


def test_no_fault_named_means_inert(monkeypatch):
    monkeypatch.delenv(faults.ENV, raising=False)
    assert faults.active() is None and faults.adaptation_item() == {}
    vllm_plugin.register()  # nothing patched without a fault
    assert not vllm_plugin._ORIGINALS
    monkeypatch.setenv(faults.ENV, "decode_state:0.1")
    item = faults.adaptation_item()["injected_fault"]
    assert item["status"] == "failed" and item["value"] == "decode_state:0.1" and "unset it" in item["note"]


def test_mantissa_rounding_matches_hand_computed_values():
    values = torch.tensor([1.0, 1.0 + 2**-8, 1.0 + 3 * 2**-8, 1.0 + 2**-7, -2.5 - 2**-9, 3.0e-5])
    # bf16 keeps 7 bits: 1 + 2^-8 is halfway between 1 and 1 + 2^-7 and goes to the even one (1); 1 + 3 * 2^-8 is
    # halfway between 1 + 2^-7 and 1 + 2^-6 and goes to 1 + 2^-6 (even); -2.5 - 2^-9 rounds to -2.5.
    expected = torch.tensor([1.0, 1.0, 1.0 + 2**-6, 1.0 + 2**-7, -2.5])
    rounded = faults.round_mantissa(values, 7)
    assert torch.equal(rounded[:5], expected)
    assert torch.equal(rounded, values.to(torch.bfloat16).float())  # exactly what a bf16 cast makes
    assert torch.equal(faults.round_mantissa(values, 2)[:4], torch.tensor([1.0, 1.0, 1.0, 1.0]))
    assert faults.round_mantissa(values, 23) is values


def test_layer_output_faults_hit_their_layer_or_their_batch_only():
    output = torch.ones(4, 8)
    scale = vllm_plugin._output_fault(faults.Fault("layer_scale", 0.25, 4), "model.layers.4.linear_attn", 4)
    assert torch.equal(scale(output), torch.full((4, 8), 1.25))
    assert vllm_plugin._output_fault(faults.Fault("layer_scale", 0.25, 4), "model.layers.14.linear_attn", 4) is None
    batch = faults.Fault("batch_noise", 0.1, 64)
    assert vllm_plugin._output_fault(batch, "model.layers.0.linear_attn", 2) is None  # two sequences: exact
    assert vllm_plugin._output_fault(batch, "model.layers.0.linear_attn", 65) is None  # a long prefill: exact
    noisy = vllm_plugin._output_fault(batch, "model.layers.0.linear_attn", 3)(torch.randn(3, 8))
    assert noisy.shape == (3, 8)


def test_vision_noise_hits_the_named_vision_block_of_vllm_only(monkeypatch):
    """vLLM's vision blocks are found by the prefix of their linear layers; the patched forward spoils block 1's
    output alone (measured on vLLM 0.32: vision_noise:0.05:1 fails the vision check at 3.7x the floor's KLD)."""

    class Linear(torch.nn.Module):
        def __init__(self, prefix):
            super().__init__()
            self.prefix = prefix

    class Block(torch.nn.Module):
        def __init__(self, index):
            super().__init__()
            self.mlp = Linear(f"visual.blocks.{index}.mlp.linear_fc1")

    assert [vllm_plugin.vision_block_index(Block(i)) for i in (0, 11)] == [0, 11]
    assert vllm_plugin.vision_block_index(torch.nn.Linear(2, 2)) is None
    monkeypatch.setitem(vllm_plugin._ORIGINALS, "vision_forward", lambda self, x: x)
    monkeypatch.setattr(vllm_plugin, "_FAULT", [faults.Fault("vision_noise", 0.5, 1)])
    x = torch.randn(6, 8)
    assert torch.equal(vllm_plugin.vision_block_forward(Block(0), x), x)
    spoiled = vllm_plugin.vision_block_forward(Block(1), x)
    assert spoiled.shape == x.shape and not torch.equal(spoiled, x)


def test_a_switch_before_the_plugin_is_patched_in_says_how():
    assert vllm_plugin.set_fault("layer_scale:0.1") == {
        "ok": False, "reason": "the fault plugin is not patched in: start the engine with PORTCHECK_FAULT set"}


def _logits(model_dir, monkeypatch, fault=None, target="cpu-hf-fp32"):
    from portcheck.engines.factory import make_engine
    from portcheck.engines.settings import EngineSettings
    from portcheck.targets import parse_target

    if fault:
        monkeypatch.setenv(faults.ENV, fault)
        monkeypatch.setenv(hf_hooks.TARGET_ENV, "cpu-hf-fp32")
    with make_engine(parse_target(target), model_dir, EngineSettings(threads=1)) as engine:
        rows = engine.score([list(range(20, 60))])[0].logits
        return rows, engine.adaptation()


def test_the_hf_hooks_spoil_the_named_target_from_the_named_layer_on(tiny_model_dir, monkeypatch):
    clean, items = _logits(tiny_model_dir, monkeypatch)
    assert "injected_fault" not in items
    scaled, items = _logits(tiny_model_dir, monkeypatch, "layer_scale:0.5:4")
    assert items["injected_fault"]["value"] == "layer_scale:0.5:4"
    assert np.abs(scaled - clean).max() > 1e-2
    other, items = _logits(tiny_model_dir, monkeypatch, "layer_scale:0.5:4", target="cpu-hf-bf16")
    assert "injected_fault" not in items  # the fault names another target: this one (the reference's kind) is clean


def test_the_hf_hooks_refuse_a_layer_without_gdn_and_a_vllm_only_fault(tiny_model_dir, monkeypatch):
    with pytest.raises(PortcheckError, match="decoder layer 3 is not a Gated DeltaNet layer"):
        _logits(tiny_model_dir, monkeypatch, "layer_scale:0.5:3")
    with pytest.raises(PortcheckError, match="fault state_decay:1 has no hf equivalent"):
        _logits(tiny_model_dir, monkeypatch, "state_decay:1")
