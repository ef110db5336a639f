"""The lm-eval tasks of the accuracy stage. Two ship with portcheck, written for it and loaded from JSON lines in
this package (no download): `portcheck_mc` (multiple choice, scored by log-likelihood) and `portcheck_gen` (short
greedy answers, exact match), each half English, half Chinese. Any other name is a task of lm-eval's registry
(gsm8k, ceval-valid, ...), whose dataset lm-eval downloads.

Every task is loaded (its dataset read) before an engine starts: an unknown name or a dataset that cannot be
fetched is refused first, naming the task and the shipped alternative."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from portcheck.errors import PortcheckError

DATA_DIR = Path(__file__).parent / "data"
LOCAL_TASKS = ("portcheck_mc", "portcheck_gen")
PROMPT = "Question: {{question}}\nAnswer:"


def local_task(name: str) -> dict[str, Any]:
    """lm-eval's task config of a shipped task, its data file given by absolute path (relative ones resolve
    against the working directory)."""
    common = {"task": name, "dataset_path": "json", "test_split": "test", "doc_to_text": PROMPT,
              "doc_to_target": "{{answer}}", "metadata": {"version": 1},
              "dataset_kwargs": {"data_files": {"test": str(DATA_DIR / f"{name}.jsonl")}}}
    if name == "portcheck_mc":
        return {**common, "output_type": "multiple_choice", "doc_to_choice": "{{choices}}",
                "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}]}
    if name == "portcheck_gen":
        return {**common, "output_type": "generate_until",
                "generation_kwargs": {"until": ["\n"], "max_gen_toks": 16, "do_sample": False, "temperature": 0.0},
                "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True,
                                 "ignore_case": True, "ignore_punctuation": True}]}
    raise KeyError(name)


def data_files() -> list[str]:
    """The shipped tasks' data (rule inputs: an edit reruns the evaluations)."""
    return [str(DATA_DIR / f"{name}.jsonl") for name in LOCAL_TASKS]


def load_tasks(names: list[str]) -> dict[str, Any]:
    """lm-eval Task objects by task name, their datasets read. PortcheckError for a name lm-eval does not know and for
    a registry task whose dataset cannot be had (no network, no cache)."""
    from lm_eval.tasks import TaskManager

    registry = [name for name in names if name not in LOCAL_TASKS]
    manager = TaskManager(include_defaults=bool(registry))
    unknown = [name for name in registry if name not in manager.all_tasks]
    if unknown:
        raise PortcheckError(f"accuracy.tasks: lm-eval has no task {', '.join(map(repr, unknown))}; name a task of "
                             f"`lm-eval ls tasks`, or the shipped ones ({', '.join(LOCAL_TASKS)})")
    specs = [local_task(name) if name in LOCAL_TASKS else name for name in names]
    try:
        loaded = manager.load(specs)["tasks"]
    except Exception as exc:  # noqa: BLE001 - a dataset fetch fails in many ways (offline, gated, absent)
        raise PortcheckError(
            f"accuracy.tasks: lm-eval could not load {', '.join(registry) or 'the tasks'}: {type(exc).__name__}: "
            f"{str(exc)[:300]}. A registry task downloads its dataset from the Hugging Face Hub: allow the network "
            f"or fill the datasets cache (HF_DATASETS_CACHE) first, or use the shipped tasks "
            f"({', '.join(LOCAL_TASKS)}), which need no download") from exc
    return loaded  # a group (ceval-valid) comes as its subtasks
