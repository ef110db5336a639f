"""Localisation against the bf16 floor (issue 17): each decoder layer's added error as a multiple of the floor's
(cpu-hf-bf16 against the fp32 reference) at the same layer. A fault a few times the floor's error in one layer,
under the absolute thresholds, is named; a clean bf16 run computed otherwise is not; without a floor the multiples
are unknown; a non-finite layer output or GDN state is over and named; a bad multiple is refused."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import yaml

from conftest import ROOT
from portcheck.atomic import write_json
from portcheck.compare.layers import compare_layers_files
from portcheck.targets import floor_absence
from portcheck.config import load_schema, validate_config
from portcheck.dump.layers_file import write_layers
from portcheck.engines.outputs import LayerStates
from portcheck.errors import PortcheckError
from portcheck.report.format import markdown_table
from portcheck.report.load import TargetData
from portcheck.report.plots import plot_layer_errors
from portcheck.report.sections.layers import layers_section
from test_precision_depth import layer_run, noise_in_layer

LAYER_SETTINGS = {"cosine_min": 0.99, "rel_l2_max": 0.05, "floor_multiple_max": 2.0}  # the config's defaults


def eager_attention(model):
    """A clean run computed otherwise: eager attention instead of sdpa (other rounding in the full-attention
    layers, and from there on)."""
    model.set_attn_implementation("eager")


@pytest.fixture(scope="module")
def floor_runs(tiny_model_dir, tmp_path_factory):
    """The fp32 reference; the bf16 floor (cpu-hf-bf16); a clean bf16 run computed otherwise (eager attention);
    the floor with noise in layer 5 of ~3.5x the floor's own added error there, under the absolute thresholds."""
    out = tmp_path_factory.mktemp("floor")
    runs = {"reference": ("cpu-hf-fp32", None), "floor": ("cpu-hf-bf16", None),
            "clean": ("cpu-hf-bf16", eager_attention), "faulty": ("cpu-hf-bf16", noise_in_layer(5, 0.01))}
    with pytest.MonkeyPatch.context() as monkeypatch:
        return {name: layer_run(tiny_model_dir, out / name, monkeypatch, target, change)
                for name, (target, change) in runs.items()}


def against_floor(runs, name):
    return compare_layers_files(runs["reference"], runs[name], LAYER_SETTINGS, floor_path=runs["floor"])


def test_a_fault_under_the_thresholds_is_named_against_the_bf16_floor(floor_runs):
    result = against_floor(floor_runs, "faulty")
    print(result["finding"], [(row["name"], row["added_error"], row["floor_multiple"]) for row in result["layers"]])
    assert result["first_divergent"] is None and result["status"] == "within thresholds"  # invisible to those
    floor = result["floor"]
    assert floor["target"] == "cpu-hf-bf16" and floor["status"] == "over"
    assert floor["first_over"]["name"] == "layer 5" and 3 < floor["first_over"]["floor_multiple"] < 6
    multiples = [row["floor_multiple"] for row in result["layers"]]
    assert multiples[:5] == [1, 1, 1, 1, 1]  # the same bf16 computation up to the fault
    assert "first over 2x the bf16 floor's added error (cpu-hf-bf16): layer 5 (Gated DeltaNet" in result["finding"]
    assert len(floor["added_error"]) == len(floor["rel_l2_mean"]) == len(result["layers"])


def test_a_clean_bf16_run_is_not_named_against_the_floor(floor_runs):
    result = against_floor(floor_runs, "clean")
    multiples = [row["floor_multiple"] for row in result["layers"] if row["index"] is not None]
    print(result["finding"], multiples)
    assert result["floor"]["status"] == "within" and result["floor"]["first_over"] is None
    assert multiples != [1.0] * len(multiples) and all(0.8 < m < 1.2 for m in multiples)  # another rounding
    assert "no layer over 2x the bf16 floor's added error (cpu-hf-bf16, largest" in result["finding"]


def test_the_report_and_the_plot_show_the_floor(floor_runs, tmp_path):
    path = tmp_path / "results" / "m" / "compare" / "cpu-vllm-bf16.layers.json"
    path.parent.mkdir(parents=True)
    write_json(path, against_floor(floor_runs, "faulty"))
    data = TargetData("cpu-vllm-bf16", "target", layers_compare=json.loads(path.read_text()),
                      paths={"layers_compare": str(path)})
    floor = layers_section([data])["targets"][0]["floor"]
    assert floor["finding"].startswith("first over 2x the bf16 floor's added error (cpu-hf-bf16): layer 5")
    text = markdown_table(floor["table"])
    assert re.search(r"\| layer 5 \| Gated DeltaNet \| 1\.\d\d% \| 0\.\d\d% \| \d\.\d\d× \| ❌ yes \|", text)
    assert "| layer 4 | Gated DeltaNet |" in text and "| 1.00× | no |" in text
    assert "cpu-vllm-bf16.layers.json (layers.added\\_error, layers.floor\\_multiple" in text
    plot_layer_errors({"cpu-vllm-bf16": path}, tmp_path / "layers.png")
    assert (tmp_path / "layers.png").stat().st_size > 10_000


def test_what_stands_in_for_a_floor_and_the_floor_itself():
    enabled = ["cpu-hf-fp32", "cpu-hf-bf16", "cpu-vllm-bf16"]
    assert floor_absence("cpu-vllm-bf16", "cpu-hf-fp32", enabled) is None
    assert floor_absence("cpu-hf-bf16", "cpu-hf-fp32", enabled).startswith("cpu-hf-bf16 is the floor")
    assert floor_absence("npu-vllm-bf16", "cpu-hf-fp32", ["cpu-hf-fp32", "npu-vllm-bf16"]) == (
        "no floor: cpu-hf-bf16 is disabled")
    assert floor_absence("cpu-vllm-bf16", "cpu-hf-bf16", enabled) == "no floor: the reference is cpu-hf-bf16"


def test_without_a_floor_the_multiples_are_unknown(floor_runs):
    result = compare_layers_files(floor_runs["reference"], floor_runs["faulty"], LAYER_SETTINGS,
                                  no_floor="no floor: cpu-hf-bf16 is disabled")
    assert result["floor"]["status"] == "unknown" and result["floor"]["first_over"] is None
    assert {row["over_floor"] for row in result["layers"]} == {None}
    assert "against the bf16 floor: unknown (no floor: cpu-hf-bf16 is disabled)" in result["finding"]


def synthetic_layers(path, hidden, states=None, target="cpu-hf-fp32"):
    """A layers file of 2 decoder layers (Gated DeltaNet, full attention) + the final norm, one sequence."""
    captured = LayerStates([hidden], indices=[0, 1], gdn_states=None if states is None else [states], gdn_layers=[0],
                           gdn_state_dtype="float32")
    write_layers(path, captured, {"model_sha": "m", "sequences_sha": "s", "target": target,
                                  "layer_types": ["linear_attention", "full_attention"]})
    return path


def test_a_nan_layer_output_is_over_and_named(tmp_path):
    hidden = np.random.default_rng(0).normal(size=(3, 6, 8)).astype(np.float32)
    states = np.ones((1, 2, 4, 4), np.float32)
    broken = hidden.copy()
    broken[1:, 4] = np.nan  # layer 1 from position 4 on, and the final norm after it
    reference = synthetic_layers(tmp_path / "ref.safetensors", hidden, states)
    floor = synthetic_layers(tmp_path / "floor.safetensors", hidden * 1.001, states, "cpu-hf-bf16")
    target = synthetic_layers(tmp_path / "nan.safetensors", broken, states, "cpu-vllm-bf16")
    result = compare_layers_files(reference, target, LAYER_SETTINGS, floor_path=floor)
    layer = result["layers"][1]
    assert layer["over"] and layer["non_finite"] == {"reference": 0, "target": 1, "first": {"sequence": 0,
                                                                                             "position": 4}}
    assert result["first_divergent"] == {"index": 1, "name": "layer 1", "type": "full attention"}
    assert result["finding"].startswith("first over the thresholds: layer 1 (full attention): non-finite values "
                                        "at positions (target 1), first at sequence 0, position 4")
    assert layer["over_floor"] is True and result["floor"]["first_over"]["name"] == "layer 1"
    assert not result["layers"][0]["over"] and result["layers"][0]["non_finite"] is None
    write_json(tmp_path / "nan.layers.json", result)  # NaN metrics are null in the file: the plot leaves them out
    plot_layer_errors({"cpu-vllm-bf16": tmp_path / "nan.layers.json"}, tmp_path / "layers.png")


def test_a_nan_gdn_state_is_over_and_named(tmp_path):
    hidden = np.random.default_rng(0).normal(size=(3, 6, 8)).astype(np.float32)
    states = np.ones((1, 2, 4, 4), np.float32)
    broken = states.copy()
    broken[0, 1, 2, 3] = np.nan
    reference = synthetic_layers(tmp_path / "ref.safetensors", hidden, states)
    target = synthetic_layers(tmp_path / "nan.safetensors", hidden, broken, "cpu-vllm-bf16")
    result = compare_layers_files(reference, target, LAYER_SETTINGS)
    gdn = result["gdn_states"]
    assert gdn["status"] == "diverges" and gdn["first_divergent"] == "layer 0"
    assert gdn["layers"][0]["over"] and gdn["layers"][0]["non_finite"] == {"reference": 0, "target": 1}
    assert result["first_divergent"] is None  # the outputs themselves are exact


@pytest.mark.parametrize("value", ["many", 1, 0.5, None])
def test_a_bad_floor_multiple_is_refused_at_validation(value):
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    config["layers"]["floor_multiple_max"] = value
    with pytest.raises(PortcheckError, match="config key layers.floor_multiple_max"):
        validate_config(config, load_schema(ROOT / "config" / "schema.yaml"), ROOT)


def test_a_nan_floor_multiple_is_refused_by_the_comparison(floor_runs):
    with pytest.raises(PortcheckError, match="layers.floor_multiple_max must be a number > 1, got nan"):
        compare_layers_files(floor_runs["reference"], floor_runs["clean"], {**LAYER_SETTINGS,
                             "floor_multiple_max": math.nan}, floor_path=floor_runs["floor"])
