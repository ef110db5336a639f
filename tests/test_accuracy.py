"""The accuracy stage (issue 20, section 2): the exact McNemar test and vllm-ascend's rtol rule against hand-computed
values, the per-item comparison on items laid out as lm-eval logs them, the shipped tasks run by lm-eval on the tiny
model, and every bad input refused before an engine starts. The vLLM side (local-completions through `vllm serve`)
runs in the default workflow run (tests/test_workflow.py)."""

from __future__ import annotations

import json

import pytest

from portcheck.accuracy.compare import compare_accuracy, compare_task, mcnemar_exact, within_rtol
from portcheck.accuracy.evaluate import evaluate_accuracy
from portcheck.accuracy.tasks import DATA_DIR, LOCAL_TASKS, load_tasks
from portcheck.engines.settings import EngineSettings
from portcheck.errors import PortcheckError

from conftest import default_config, problems_of

ACCURACY = {"enabled": True, "tasks": list(LOCAL_TASKS), "limit": None, "num_fewshot": 0, "num_concurrent": 1,
            "request_timeout_s": 60}
SERVE = {"port": None, "start_timeout_s": 60}


def test_mcnemar_exact_against_the_binomial_by_hand():
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(5, 0) == pytest.approx(2 / 2 ** 5)  # 0.0625: five discordant items can never reach 0.05
    assert mcnemar_exact(6, 0) == pytest.approx(2 / 2 ** 6)
    assert mcnemar_exact(3, 1) == pytest.approx(2 * (1 + 4) / 16)  # P(X <= 1), X ~ Bin(4, 1/2), two-sided
    assert mcnemar_exact(1, 3) == mcnemar_exact(3, 1)
    assert mcnemar_exact(10, 10) == 1.0  # capped
    assert mcnemar_exact(9, 2) == pytest.approx(2 * (1 + 11 + 55) / 2 ** 11)


def test_the_bf16_floor_is_evaluated_only_with_accuracy_floor_and_the_reference_always():
    from portcheck.targets import references_off

    targets = ["cpu-hf-fp32", "cpu-hf-bf16", "cpu-vllm-bf16"]
    accuracy = default_config()["accuracy"]
    assert accuracy["floor"] is False  # the shipped default
    assert references_off(targets, "cpu-hf-fp32", "accuracy", accuracy) == {"cpu-hf-bf16": "accuracy.floor is false"}
    assert references_off(targets, "cpu-hf-fp32", "accuracy", {**accuracy, "floor": True}) == {}
    # the floor as the reference: the comparison's other side, evaluated (accuracy has no `reference` key)
    assert references_off(targets, "cpu-hf-bf16", "accuracy", accuracy) == {}
    assert references_off(["cpu-vllm-bf16"], "cpu-hf-fp32", "accuracy", accuracy) == {}


def test_rtol_rule_is_vllm_ascends_isclose():
    # Qwen3-8B gsm8k strict-match 0.765 in vllm-ascend's accuracy CI; rtol 0.05 allows 0.03825 either way
    assert within_rtol(0.765, 0.73, 0.05) and within_rtol(0.765, 0.80, 0.05)
    assert not within_rtol(0.765, 0.72, 0.05) and not within_rtol(0.765, 0.81, 0.05)
    assert within_rtol(0.0, 0.0, 0.05) and not within_rtol(0.0, 0.01, 0.05)


def items(correct: list[int], answers: list | None = None) -> dict:
    answers = answers or [0 if c else 1 for c in correct]
    return {"metric": "acc", "stderr": None, "items": [
        {"doc_id": i, "answer": a, "correct": float(c)} for i, (c, a) in enumerate(zip(correct, answers))]}


def test_mcnemar_fails_a_loss_that_the_rtol_rule_lets_pass():
    reference = [1] * 200 + [0] * 200
    target = [0] * 10 + [1] * 190 + [0] * 200  # 10 items lost, none gained: 0.475 against 0.5
    task = compare_task(items(reference), items(target), rtol=0.05, alpha=0.05)
    assert task["within_rtol"] and task["lost"] == 10 and task["gained"] == 0
    assert task["mcnemar_p"] == pytest.approx(2 / 2 ** 10) and task["status"] == "fail"
    assert task["same_answer"] == pytest.approx(390 / 400)


def test_as_many_gained_as_lost_passes_and_a_big_drop_fails_both_rules():
    reference = [1] * 20 + [0] * 20
    swapped = [0] * 3 + [1] * 17 + [1] * 3 + [0] * 17
    task = compare_task(items(reference), items(swapped), rtol=0.05, alpha=0.05)
    assert (task["lost"], task["gained"], task["status"]) == (3, 3, "pass") and task["mcnemar_p"] == 1.0
    dropped = [0] * 12 + [1] * 8 + [0] * 20
    task = compare_task(items(reference), items(dropped), rtol=0.05, alpha=0.05)
    assert task["status"] == "fail" and not task["within_rtol"] and task["significantly_worse"]


def test_a_task_the_reference_barely_solves_is_inconclusive_not_a_pass():
    reference = [1] * 5 + [0] * 35  # even losing all 5: p = 0.0625
    task = compare_task(items(reference), items(reference), rtol=0.05, alpha=0.05)
    assert not task["mcnemar_could_fail"] and task["status"] == "inconclusive"
    nothing = compare_task(items([0] * 12), items([0] * 12), rtol=0.05, alpha=0.05)  # exact match 0 on both
    assert nothing["status"] == "inconclusive"
    six = compare_task(items([1] * 6 + [0] * 34), items([1] * 6 + [0] * 34), rtol=0.05, alpha=0.05)
    assert six["mcnemar_could_fail"] and six["status"] == "pass"


def test_the_comparison_needs_the_same_tasks_and_items_on_both_sides():
    side = {"target": "t", "tasks": {"portcheck_mc": items([1, 0])}}
    other = {"target": "r", "tasks": {"portcheck_gen": items([1, 0])}}
    with pytest.raises(PortcheckError, match="one side only"):
        compare_accuracy(other, side, 0.05, 0.05, False)
    shifted = {"metric": "acc", "items": [{"doc_id": 7, "answer": 0, "correct": 1.0}]}
    with pytest.raises(PortcheckError, match="no document in common"):
        compare_task(items([1]), shifted, 0.05, 0.05)
    result = compare_accuracy({"target": "r", "tasks": {"portcheck_mc": items([1] * 8)}},
                              {"target": "t", "tasks": {"portcheck_mc": items([0] * 8)}}, 0.05, 0.05, True)
    assert result["verdict"]["status"] == "fail" and result["in_verdict"]


def test_an_unknown_task_is_refused_naming_the_shipped_ones():
    with pytest.raises(PortcheckError, match=r"no task 'no_such_task_xyz'.*portcheck_mc, portcheck_gen"):
        load_tasks(["no_such_task_xyz"])


def test_a_registry_task_without_its_dataset_is_refused_naming_the_local_alternative(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PortcheckError, match=r"could not load gsm8k.*shipped tasks \(portcheck_mc, portcheck_gen\)"):
        load_tasks(["gsm8k"])


def test_an_hf_target_in_its_own_environment_is_refused_before_lm_eval_starts(tmp_path):
    with pytest.raises(PortcheckError, match="lm-eval's hf model runs in portcheck's"):
        evaluate_accuracy("cpu-hf-fp32", tmp_path, EngineSettings(), ACCURACY, SERVE, tmp_path / "a.json",
                          tmp_path / "s.log", python_env=str(tmp_path / "env"))
    assert not (tmp_path / "a.json").exists()


def test_config_refuses_bad_accuracy_settings():
    config = default_config()
    config["accuracy"] = {"tasks": []}
    assert "accuracy" in problems_of(config)
    config["accuracy"] = {"rtol": -0.1}
    assert "rtol" in problems_of(config)
    config["accuracy"] = {"limit": 0}
    assert "limit" in problems_of(config)


def test_shipped_tasks_run_by_lm_eval_on_the_reference_engine(tiny_model_dir, tmp_path):
    output = tmp_path / "accuracy.json"
    record = evaluate_accuracy("cpu-hf-fp32", tiny_model_dir, EngineSettings(threads=1),
                               {**ACCURACY, "limit": 6}, SERVE, output, tmp_path / "server.log")
    assert json.loads(output.read_text()) == record
    mc, gen = record["tasks"]["portcheck_mc"], record["tasks"]["portcheck_gen"]
    assert (mc["metric"], mc["n"], gen["metric"], gen["n"]) == ("acc", 6, "exact_match", 6)
    assert [item["id"] for item in mc["items"]] == [f"mc-{i:02d}" for i in range(6)]
    for item in mc["items"]:  # the answer is the choice of highest log-likelihood, correct against the data's answer
        assert len(item["loglikelihoods"]) == 4
        assert item["answer"] == max(range(4), key=item["loglikelihoods"].__getitem__)
    data = [json.loads(line) for line in open(DATA_DIR / "portcheck_mc.jsonl", encoding="utf-8")][:6]
    assert [item["correct"] for item in mc["items"]] == [float(i["answer"] == d["answer"])
                                                          for i, d in zip(mc["items"], data)]
    assert mc["score"] == pytest.approx(sum(i["correct"] for i in mc["items"]) / 6)
    assert all(isinstance(item["answer"], str) for item in gen["items"])
    same = compare_accuracy(record, record, 0.05, 0.05, False)
    assert all(task["same_answer"] == 1.0 and task["lost"] == task["gained"] == 0 for task in same["tasks"].values())

