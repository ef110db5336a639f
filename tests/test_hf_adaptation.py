"""The hf engine's Gated DeltaNet item on both transformers layouts (issue 8 finding 9): 5.19 resolves the GDN
functions at module level through lazy kernels (read on the real model here); 5.5.x (what vllm-ascend 0.23 pins)
binds them on each layer in __init__, with causal_conv1d_fn None meaning the layer's nn.Conv1d runs. Checked on
transformers 5.5.4 itself: the item read "not determined" before, "reference PyTorch fallback" after."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from portcheck.engines import hf


def fake_model(module_name: str, bound: dict):
    """A model whose one GDN layer is an instance of a class defined in `module_name`, with `bound` as attributes
    set in __init__ (transformers 5.5.x) and the module holding plain functions only (no lazy kernel)."""
    module = types.ModuleType(module_name)

    def torch_chunk_gated_delta_rule(*args):  # plain module-level functions, as in 5.5.x
        return args

    module.torch_chunk_gated_delta_rule = torch_chunk_gated_delta_rule
    module.causal_conv1d_fn = None
    layer_class = type("GatedDeltaNet", (), {"__module__": module_name})
    layer = layer_class()
    layer.conv1d = torch.nn.Conv1d(2, 2, 3)
    vars(layer).update(bound)
    sys.modules[module_name] = module
    decoder = types.SimpleNamespace(linear_attn=layer)
    return types.SimpleNamespace(model=types.SimpleNamespace(layers=[decoder]))


def kernel(name: str, module: str):
    function = lambda *a: a  # noqa: E731
    function.__module__, function.__qualname__ = module, name
    return function


def test_transformers_5_5_layout_names_the_functions_bound_on_the_layer():
    torch_fn = {name: kernel(name, "transformers.models.qwen3_5.modeling_qwen3_5")
                for name in ("torch_chunk_gated_delta_rule", "torch_recurrent_gated_delta_rule",
                             "torch_causal_conv1d_update")}
    entry = hf._gdn_item(fake_model("fake_tf55_reference", {
        "chunk_gated_delta_rule": torch_fn["torch_chunk_gated_delta_rule"],
        "recurrent_gated_delta_rule": torch_fn["torch_recurrent_gated_delta_rule"],
        "causal_conv1d_fn": None,  # the layer's nn.Conv1d runs
        "causal_conv1d_update": torch_fn["torch_causal_conv1d_update"],
    }))
    assert entry["status"] == "ok" and entry["value"] == "reference PyTorch fallback", entry
    assert "causal_conv1d_fn -> torch.nn.modules.conv" in entry["note"]

    fla = hf._gdn_item(fake_model("fake_tf55_fla", {
        "chunk_gated_delta_rule": kernel("chunk_gated_delta_rule", "fla.ops.gated_delta_rule.chunk"),
        "recurrent_gated_delta_rule": kernel("fused_recurrent_gated_delta_rule", "fla.ops.gated_delta_rule"),
        "causal_conv1d_fn": kernel("causal_conv1d_fn", "causal_conv1d.causal_conv1d_interface"),
        "causal_conv1d_update": kernel("causal_conv1d_update", "causal_conv1d.causal_conv1d_interface"),
    }))
    assert fla["value"] == "optimised kernel" and "torch_chunk_gated_delta_rule -> fla.ops" in fla["note"]


def test_a_layout_it_cannot_read_is_not_determined():
    entry = hf._gdn_item(fake_model("fake_unknown_layout", {}))
    assert entry["status"] == "not determined" and "cannot introspect" in entry["note"]


def test_transformers_installed_here_resolves_the_real_model(tiny_model_dir):
    from portcheck.engines.factory import make_engine
    from portcheck.engines.settings import EngineSettings
    from portcheck.targets import parse_target

    engine = make_engine(parse_target("cpu-hf-bf16"), tiny_model_dir, EngineSettings())
    try:
        items = engine.adaptation()
    finally:
        engine.close()
    assert items["gdn_implementation"]["status"] == "ok", items["gdn_implementation"]
    assert items["gdn_implementation"]["value"] in ("reference PyTorch fallback", "optimised kernel")
    assert items["ssm_state_dtype"]["status"] == "ok"


@pytest.fixture(autouse=True)
def _forget_fake_modules():
    yield
    for name in [n for n in sys.modules if n.startswith("fake_")]:
        del sys.modules[name]
