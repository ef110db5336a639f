"""One server start for the serving check and the accuracy evaluation (issue 22): the hand-off store takes a
record only for the exact request it was made for (params, inputs' content, code), and the serving check's offer
is made only where the evaluation could use it. The end-to-end hit, and a miss that evaluates on its own server to
the same items, run in the workflow tests (tests/test_workflow.py)."""

from __future__ import annotations

import json

import pytest

from portcheck.accuracy.evaluate import evaluation_params, evaluation_request, loaded_handover, served_handover
from portcheck.workflow.handoff import deposit, do_work, handoff_path, holds, take

from conftest import ROOT
from conftest import default_config as shipped_config


def default_config() -> dict:
    """The shipped config with the schema's defaults filled in, as Snakemake's jobs see it."""
    from portcheck.config import load_schema, validate_config

    return validate_config(shipped_config(), load_schema(ROOT / "config" / "schema.yaml"), ROOT)

RECORD = {"target": "cpu-vllm-bf16", "tasks": {"t": {"score": 0.5}}}


@pytest.fixture
def inputs(tmp_path):
    manifest, task = tmp_path / "manifest.json", tmp_path / "task.jsonl"
    manifest.write_text('{"model": "m"}')
    task.write_text('{"q": 1}\n')
    return manifest, task


def request_for(config, inputs, target="cpu-vllm-bf16"):
    params = evaluation_params(config, target, {"vllm": "0.32.0"}, None, "0.4.13")
    return evaluation_request(target, params, inputs[0], [inputs[1]])


def test_a_record_is_taken_for_the_same_request_only(tmp_path, inputs):
    config = default_config()
    request = request_for(config, inputs)
    assert take(tmp_path, request) is None and not holds(tmp_path, request)
    path = deposit(tmp_path, request, RECORD)
    assert path == handoff_path(tmp_path, request) == tmp_path / "evaluate_accuracy" / "cpu-vllm-bf16.json"
    assert holds(tmp_path, request) and take(tmp_path, json.loads(json.dumps(request))) == RECORD
    config["accuracy"]["limit"] = 3  # a setting of the evaluation
    assert take(tmp_path, request_for(config, inputs)) is None


def test_an_edited_input_or_code_is_a_miss(tmp_path, inputs):
    request = request_for(default_config(), inputs)
    deposit(tmp_path, request, RECORD)
    inputs[1].write_text('{"q": 2}\n')
    assert take(tmp_path, request_for(default_config(), inputs)) is None
    inputs[1].write_text('{"q": 1}\n')
    assert take(tmp_path, request_for(default_config(), inputs)) == RECORD
    stale = json.loads(json.dumps(request))
    stale["code"]["accuracy/evaluate.py"] = "0" * 64
    assert take(tmp_path, stale) is None


def test_the_request_names_what_the_record_depends_on(inputs):
    request = request_for(default_config(), inputs)
    assert set(request) == {"rule", "target", "params", "inputs", "code"}
    assert set(request["params"]) == {"settings", "accuracy", "serve", "stack", "lm_eval", "server_env"}
    assert not {"rtol", "alpha", "in_verdict"} & set(request["params"]["accuracy"])  # the comparison's only
    assert list(request["inputs"]) == ["manifest", "tasks"] and len(request["inputs"]["tasks"]) == 1
    assert {"accuracy/evaluate.py", "benchmarks/serving.py", "workflow/handoff.py"} <= set(request["code"])


def test_an_unreadable_foreign_or_edited_record_is_a_miss(tmp_path, inputs):
    request = request_for(default_config(), inputs)
    handoff_path(tmp_path, request).parent.mkdir(parents=True)
    handoff_path(tmp_path, request).write_text("{not json")
    assert take(tmp_path, request) is None
    handoff_path(tmp_path, request).write_text("[1, 2]")
    assert take(tmp_path, request) is None
    deposit(tmp_path, request, RECORD)  # a record edited by hand after it was written
    stored = json.loads(handoff_path(tmp_path, request).read_text())
    stored["record"]["tasks"]["t"]["score"] = 1.0
    handoff_path(tmp_path, request).write_text(json.dumps(stored))
    assert take(tmp_path, request) is None and not holds(tmp_path, request)


def test_the_serving_check_offers_the_evaluation_only_where_it_can_be_used(tmp_path, inputs):
    config = default_config()
    target = "cpu-vllm-bf16"
    offer = served_handover(config, target, tmp_path, None, inputs[0], tmp_path / "store")
    assert list(offer) == ["evaluate_accuracy"]
    config["accuracy"]["enabled"] = False
    assert served_handover(config, target, tmp_path, None, inputs[0], tmp_path / "store") == {}
    config["accuracy"]["enabled"] = True
    config["targets"][target]["python_env"] = "envs/other"  # lm-eval is portcheck's, not that environment's
    assert served_handover(config, target, tmp_path, None, inputs[0], tmp_path / "store") == {}


def test_an_hf_dump_offers_the_evaluation_with_the_model_it_loaded_only_where_it_can_be_used(tmp_path, inputs):
    def floor_evaluated():
        config = default_config()
        config["accuracy"]["floor"] = True
        return config

    config = default_config()
    store = tmp_path / "store"
    assert list(loaded_handover(config, "cpu-hf-fp32", inputs[0], store)) == ["evaluate_accuracy"]
    assert loaded_handover(config, "cpu-hf-bf16", inputs[0], store) == {}  # accuracy.floor is false
    assert list(loaded_handover(floor_evaluated(), "cpu-hf-bf16", inputs[0], store)) == ["evaluate_accuracy"]
    assert loaded_handover(config, "cpu-vllm-bf16", inputs[0], store) == {}  # its serving check offers it
    # the reference alone with the floor: no target is evaluated against it, so no job asks for its evaluation
    alone = default_config()
    alone["targets"]["cpu-vllm-bf16"]["enabled"] = False
    assert loaded_handover(alone, "cpu-hf-fp32", inputs[0], store) == {}
    alone["accuracy"]["floor"] = True
    assert list(loaded_handover(alone, "cpu-hf-fp32", inputs[0], store)) == ["evaluate_accuracy"]
    # which targets are evaluated is not a setting of the evaluation: the request stays the same
    assert request_for(floor_evaluated(), inputs, "cpu-hf-bf16") == request_for(config, inputs, "cpu-hf-bf16")
    # the request names the engine that loaded the model (a served target's, the server's)
    assert "engines/hf.py" in request_for(config, inputs, "cpu-hf-bf16")["code"]
    assert "engines/hf.py" not in request_for(config, inputs, "cpu-vllm-bf16")["code"]
    changes = {"the dump loads the image-text class": lambda c: c["targets"]["cpu-hf-bf16"].update(
                   language_model_only=False),
               "lm-eval is portcheck's, not that environment's": lambda c: c["targets"]["cpu-hf-bf16"].update(
                   python_env="envs/other"),
               "no accuracy stage": lambda c: c["accuracy"].update(enabled=False)}
    for why, change in changes.items():
        config = floor_evaluated()
        change(config)
        assert loaded_handover(config, "cpu-hf-bf16", inputs[0], store) == {}, why


def test_a_loaded_model_with_a_drill_s_fault_is_not_evaluated_for_the_target():
    from types import SimpleNamespace

    from portcheck.accuracy.evaluate import evaluate_on_engine
    from portcheck.errors import PortcheckError

    faulted = SimpleNamespace(injected_fault={"kind": "scale"}, model=None, model_dir="m", settings=None)
    with pytest.raises(PortcheckError, match="drill's fault injected; the evaluation loads its own"):
        evaluate_on_engine("cpu-hf-bf16", faulted, default_config()["accuracy"])
    # do_work reports it and the evaluation job does its own work
    assert do_work("evaluate_accuracy", lambda engine: evaluate_on_engine("cpu-hf-bf16", engine, {}),
                   faulted)["status"] == "failed"


def test_failed_work_on_the_server_is_reported_and_does_not_fail_the_check():
    def broken(port):
        raise ConnectionError(f"port {port} refused")

    assert do_work("evaluate_accuracy", broken, 8000) == {
        "status": "failed", "error": "ConnectionError: port 8000 refused"}
    done = do_work("evaluate_accuracy", lambda port: None, 8000)
    assert done["status"] == "ok" and done["seconds"] >= 0


def test_the_dump_job_offers_the_benchmarks_only_where_they_can_be_used(tmp_path, inputs):
    from portcheck.benchmarks.offline import bench_request, benchmark_handover
    from portcheck.benchmarks.plan import bench_params

    config = default_config()
    store = tmp_path / "store"
    assert list(benchmark_handover(config, "cpu-vllm-bf16", tmp_path, None, inputs[0], store)) == ["run_benchmarks"]
    assert benchmark_handover(config, "cpu-hf-fp32", tmp_path, None, inputs[0], store) == {}  # bench.reference off
    assert benchmark_handover(config, "cpu-hf-bf16", tmp_path, None, inputs[0], store) == {}  # bench.floor off
    config["bench"]["reference"] = True
    assert list(benchmark_handover(config, "cpu-hf-fp32", tmp_path, None, inputs[0], store)) == ["run_benchmarks"]
    config["targets"]["cpu-hf-fp32"]["python_env"] = "envs/other"  # the job runs in another interpreter
    assert benchmark_handover(config, "cpu-hf-fp32", tmp_path, None, inputs[0], store) == {}
    # the store holds this exact request already: nothing to measure
    from portcheck.workflow.version_params import result_versions

    request = bench_request("cpu-vllm-bf16", bench_params(config, "cpu-vllm-bf16", result_versions("cpu-vllm-bf16")),
                            None, inputs[0])
    deposit(store, request, RECORD)
    assert benchmark_handover(config, "cpu-vllm-bf16", tmp_path, None, inputs[0], store) == {}
    # which targets are benchmarked and the checks' tolerance are not part of the measurement's request
    assert not {"reference", "consistency_tolerance"} & set(request["params"]["measured"]["bench"])
    assert {"benchmarks/offline.py", "engines/hf.py", "engines/vllm/engine.py"} <= set(request["code"])
