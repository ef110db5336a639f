"""The adaptation checklist names the GDN code that is bound and that ran, read from the functions themselves:
the project's fault plugin (portcheck.faults.vllm_plugin) patches vLLM's GDN layer the way vllm-ascend does
(rebinding a method of vLLM's class, swapping a module-level kernel), and the checklist must name the plugin's
functions, with calls."""

from __future__ import annotations

import contextlib

import pytest

from portcheck.engines.factory import make_engine
from portcheck.engines.settings import EngineSettings
from portcheck.targets import parse_target

from conftest import has_gdn

pytestmark = pytest.mark.vllm


@pytest.fixture(autouse=True)
def gdn_model(request):
    """Every engine test here reads Gated DeltaNet layers: on a line's dense stand-in model they do not apply."""
    if "tiny_model_dir" in request.fixturenames and not has_gdn(request.getfixturevalue("tiny_model_dir")):
        pytest.skip("the model has no Gated DeltaNet layers (the dense stand-in of a vLLM line that cannot run "
                    "Qwen3.5)")

PLUGIN = "portcheck.faults.vllm_plugin"
PROMPTS = [list(range(10, 40)), list(range(50, 70))]


def own_kernel() -> tuple[str, str]:
    """The module-level slot the plugin swaps on this vLLM line, and vLLM's own function that sits in it."""
    from portcheck.faults.vllm_plugin import kernel_slot
    from vllm.model_executor.layers.mamba.ops.cpu import gdn_attention

    slot = kernel_slot()
    function = getattr(gdn_attention, slot)
    return f"{gdn_attention.__name__}.{slot}", f"{function.__module__}.{function.__qualname__}"


def run_engine(model_dir, log_dir) -> dict:
    settings = EngineSettings(max_model_len=256, max_num_seqs=2, extra={"log_file": str(log_dir / "engine.log")})
    engine = make_engine(parse_target("cpu-vllm-bf16"), model_dir, settings)
    try:
        engine.score(PROMPTS)
        engine.generate(PROMPTS, 4)
        return engine.adaptation()
    finally:
        engine.close()


def test_checklist_names_vllms_own_gdn_functions_and_counts_their_calls(tiny_model_dir, tmp_path):
    items = run_engine(tiny_model_dir, tmp_path)
    gdn = items["gdn_implementation"]
    value = gdn["value"]
    print(gdn)
    assert gdn["status"] == "ok", gdn
    own = "vllm.model_executor.layers.mamba.gdn.qwen_gdn_linear_attn.QwenGatedDeltaNetAttention"
    assert value["class"] == own
    assert value["forward"] == f"{own}.forward_cpu"
    assert value["foreign_bindings"] == {}
    slot, kernel = own_kernel()
    assert value["kernels"][slot] == kernel
    assert value["ran"][f"{own}.forward_cpu"] > 0 and value["ran"][kernel] > 0
    assert all(name.split(".")[0] == "vllm" for name in value["ran"])
    assert items["vllm_ascend_patches"]["status"] == "not determined"
    assert items["attention_backend"]["value"]["backend_class"].startswith("vllm.")


@contextlib.contextmanager
def fault_active(fault: str):
    """The fault plugin active with `fault` (PORTCHECK_FAULT) in this process and the engine's."""
    import vllm.plugins

    from portcheck.faults import vllm_plugin

    with pytest.MonkeyPatch.context() as mp:
        # vLLM loads general plugins by entry point (the project's dist-info) in this process, the engine core and
        # the worker; forked children inherit the patches and plugins_loaded, spawned ones read the environment.
        mp.setenv("VLLM_PLUGINS", "portcheck_faults")
        mp.setenv("PORTCHECK_FAULT", fault)
        mp.setattr(vllm.plugins, "plugins_loaded", False)
        try:
            yield
        finally:
            vllm_plugin.unpatch()


def test_checklist_names_a_plugins_rebound_forward_and_swapped_kernel(tiny_model_dir, tmp_path):
    with fault_active("layer_scale:0"):  # patched, changing nothing
        items = run_engine(tiny_model_dir, tmp_path)
    gdn = items["gdn_implementation"]
    value = gdn["value"]
    print(gdn, items["vllm_ascend_patches"])
    assert gdn["status"] == "ok", gdn
    own = "vllm.model_executor.layers.mamba.gdn.qwen_gdn_linear_attn.QwenGatedDeltaNetAttention"
    slot, _ = own_kernel()
    swapped = f"{PLUGIN}.swapped_kernel"
    assert value["class"] == own  # the class stays vLLM's: its name says nothing about what runs
    assert value["forward"] == f"{PLUGIN}.forward_cpu"
    assert value["kernels"][slot] == swapped
    assert value["foreign_bindings"] == {f"{own}.forward_cpu": f"{PLUGIN}.forward_cpu", slot: swapped}
    assert value["ran"][f"{PLUGIN}.forward_cpu"] > 0
    assert value["ran"][swapped] > 0
    assert "kind" not in value
    patches = items["vllm_ascend_patches"]
    assert patches["status"] == "ok", patches
    assert patches["value"]["rebound"][f"{own}.forward_cpu"] == f"{PLUGIN}.forward_cpu"
    assert patches["value"]["rebound"][slot] == swapped


# -- no engine needed: the gdn item's status from the worker's facts ---------------------------------------------


def _info(counts, forwards=("m.C.forward_cpu", "m.C.forward_cpu")):
    layers = [{"layer": f"l{i}", "class": "m.C", "forward": "C.forward_cpu", "forward_bound": f,
               "prefill_backend": None, "decode_kernel": None, "chunk_rule_class": None, "chunk_rule_forward": None}
              for i, f in enumerate(forwards)]
    bindings = {"m.C": {"forward_methods": {"forward": "m.C.forward"}, "kernels": {"m.k": "p.k"}, "foreign": {}}}
    return {"gdn_layers": layers, "gdn_bindings": bindings, "gdn_counts": counts}


def test_gdn_item_says_what_ran_what_is_bound_or_that_layers_differ():
    from portcheck.engines.vllm.adaptation import gdn_item

    ran = gdn_item(_info({"installed": True, "counts": {"p.k": 3, "m.C.forward": 0}}), "cpu", "")
    assert ran["status"] == "ok" and ran["value"]["ran"] == {"p.k": 3} and "calls counted" in ran["note"]
    assert ran["value"]["forward"] == "m.C.forward_cpu" and ran["value"]["kernels"] == {"m.k": "p.k"}
    graph = gdn_item(_info({"installed": False, "reason": "graph mode"}), "npu", "")
    assert graph["status"] == "ok" and graph["value"]["ran"] is None and "not what ran" in graph["note"]
    idle = gdn_item(_info({"installed": True, "counts": {}}), "cpu", "")
    assert idle["status"] == "ok" and "not what ran" in idle["note"]
    differ = gdn_item(_info({"installed": True, "counts": {"p.k": 1}}, ("m.C.forward_cpu", "p.forward")), "cpu", "")
    assert differ["status"] == "failed"


# -- where it diverges: the worker's hooks name the layer a broken kernel sits in ---------------------------------


def test_a_broken_gdn_kernel_in_one_layer_is_named_on_the_vllm_engine(tiny_model_dir, tmp_path):
    """The fault plugin's GDN forward adds noise in layer 5 only: the hooks in vLLM's worker see layers 0-4 within the
    bf16 thresholds of the hf fp32 reference and layer 5 over them; the GDN states, read from vLLM's state cache,
    stay close up to layer 5 (its state is computed before its output is spoiled) and not in layer 6."""
    from portcheck.compare.layers import compare_layers_files
    from portcheck.dump.layers_file import write_layers

    sequences = [list(range(10, 40)), [(7 * i) % 1900 + 20 for i in range(150)]]  # the second crosses two chunks
    meta = {"model_sha": "m", "sequences_sha": "s", "layer_types": TINY_LAYER_TYPES}
    reference = make_engine(parse_target("cpu-hf-fp32"), tiny_model_dir, EngineSettings(threads=1))
    try:
        write_layers(tmp_path / "ref.safetensors", reference.layer_states(sequences), {**meta, "target": "ref"})
    finally:
        reference.close()
    settings = EngineSettings(max_model_len=256, max_num_seqs=2, extra={"log_file": str(tmp_path / "engine.log")})
    with fault_active("layer_noise:1:5"):
        engine = make_engine(parse_target("cpu-vllm-bf16"), tiny_model_dir, settings)
        try:
            captured = engine.layer_states(sequences)
        finally:
            engine.close()
    print(captured.status, captured.reason, captured.gdn_reason, captured.gdn_state_dtype)
    assert captured.status == "ok" and [h.shape[:2] for h in captured.hidden] == [(9, 30), (9, 150)]
    write_layers(tmp_path / "vllm.safetensors", captured, {**meta, "target": "cpu-vllm-bf16"})
    result = compare_layers_files(tmp_path / "ref.safetensors", tmp_path / "vllm.safetensors",
                                  {"cosine_min": 0.99, "rel_l2_max": 0.05})
    print(result["finding"], [round(r["rel_l2_mean"], 4) for r in result["layers"]], result["gdn_states"])
    assert result["first_divergent"] == {"index": 5, "name": "layer 5", "type": "Gated DeltaNet"}
    assert 0 < result["layers"][4]["rel_l2_mean"] < 0.02  # bf16 rounding before the fault, not zero
    states = result["gdn_states"]
    assert states["state_dtype"] == {"reference": "float32", "target": "float32"}
    assert states["first_divergent"] == "layer 6"


TINY_LAYER_TYPES = ["linear_attention"] * 3 + ["full_attention"] + ["linear_attention"] * 3 + ["full_attention"]


class _Config:
    def __init__(self, **fields):
        self.__dict__.update(fields)


def test_graph_mode_reports_the_capture_not_run():
    from portcheck.engines.vllm import worker_layers

    graph = _Config(vllm_config=_Config(model_config=_Config(enforce_eager=False)))
    started = worker_layers.start(graph, None)
    assert started == {"ok": False, "status": "not run", "reason": started["reason"]}
    assert started["reason"].startswith("graph mode (enforce_eager off)") and "enforce_eager: true" in started["reason"]
