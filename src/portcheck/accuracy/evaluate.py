"""One target's task accuracy with lm-evaluation-harness, kept item by item. The hf engine runs in this process
through lm-eval's `hf` model; a vLLM target is started as `vllm serve` on 127.0.0.1 (the serving check's server,
from the same settings; in the target's own Python environment where it has one) and evaluated through lm-eval's
`local-completions`, so the same code measures an NPU server. Tasks are loaded before the engine starts.

A vllm target's serving check, which runs first, evaluates it on its own server before stopping it, and an hf
target's dump job evaluates it with the model it loaded; each hands the record over (portcheck.workflow.handoff):
the evaluation job then takes it instead of starting a second server or loading the model again, when its request
(params, task data, checkpoint manifest, code) is the one that job answered."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from portcheck.accuracy.tasks import data_files, load_tasks
from portcheck.atomic import write_json
from portcheck.errors import PortcheckError
from portcheck.targets import Target, parse_target, references_off


# The modules an evaluation runs, by engine: the hand-off's code key. A vllm target's includes its server; an hf
# target's the engine that loaded the model where the dump job evaluated it (lm-eval loads it where not).
HANDOVER_MODULES = {"vllm": ("accuracy.evaluate", "benchmarks.serving"), "hf": ("accuracy.evaluate", "engines.hf")}
# Settings no evaluation reads (the comparison's; which targets are evaluated): no evaluation reruns for them.
NOT_EVALUATION = ("rtol", "alpha", "in_verdict", "floor")


def evaluation_params(config: dict, target_name: str, stack: dict, server_env: str | None,
                      lm_eval: str | None) -> dict[str, Any]:
    """Rule evaluate_accuracy's params for one target (the serving check rebuilds them to do that job's work on its
    own server and hand it over: portcheck.workflow.handoff)."""
    from portcheck.config import engine_settings

    return {"settings": vars(engine_settings(config, target_name)),
            "accuracy": {key: value for key, value in config["accuracy"].items() if key not in NOT_EVALUATION},
            "serve": {key: config["serve"][key] for key in ("port", "start_timeout_s")},
            "stack": stack, "lm_eval": lm_eval, "server_env": server_env}


def evaluation_request(target_name: str, params: dict, manifest: str | Path, task_files) -> dict:
    """What a target's evaluation depends on, as portcheck.workflow.handoff compares it."""
    from portcheck.workflow.handoff import make_request

    return make_request("evaluate_accuracy", target_name, params, {"manifest": manifest, "tasks": list(task_files)},
                        HANDOVER_MODULES[parse_target(target_name).engine])


def evaluate_accuracy(target_name: str, model_dir: str | Path, settings, accuracy: dict, serve: dict,
                      output: str | Path, server_log: str | Path, python_env: str | None = None,
                      handed_over: dict | None = None) -> dict:
    """Run the configured tasks on the target and write `output` (atomically): each task's score and its items.
    `handed_over`: the record the serving check made on its own server for exactly this job (written as is)."""
    if handed_over is not None:
        write_json(output, handed_over)
        return handed_over
    target = parse_target(target_name)
    if target.engine == "hf" and python_env:
        raise PortcheckError(f"accuracy: {target_name} runs in its own environment ({python_env}), but lm-eval's hf "
                             "model runs in portcheck's; turn accuracy off or drop the target's python_env")
    tasks = load_tasks(list(accuracy["tasks"]))
    started = time.perf_counter()
    if target.engine == "hf":
        results = _run(tasks, "hf", hf_model_args(target, model_dir, settings), accuracy)
        server = None
    else:
        results, server = _run_served(target_name, model_dir, settings, tasks, accuracy, serve, server_log,
                                      python_env)
    record = accuracy_record(target_name, accuracy, server, results, started)
    write_json(output, record)
    return record


def served_handover(config: dict, target_name: str, model_dir, settings, manifest: str | Path,
                    store: str | Path) -> dict[str, Callable[[int], None]]:
    """The serving check's offer to evaluate this target on its own server (one `vllm serve` start instead of
    two): {"evaluate_accuracy": work(port)}, or {} where the accuracy stage is off, the job runs in the target's
    own Python environment (lm-eval is portcheck's), or the store already holds this exact request's result."""
    from portcheck.workflow.handoff import offer

    params = _handover_params(config, target_name)
    if params is None:
        return {}
    return offer(store, evaluation_request(target_name, params, manifest, data_files()),
                 lambda port: evaluate_on_server(target_name, port, model_dir, settings, params["accuracy"]))


def loaded_handover(config: dict, target_name: str, manifest: str | Path,
                    store: str | Path) -> dict[str, Callable[[Any], None]]:
    """An hf target's dump job's offer to evaluate it with the model it loaded (one model load and transformers
    import instead of two): {"evaluate_accuracy": work(engine)}, or {} where the target is not hf, the accuracy
    stage is off, the job runs in the target's own Python environment, the dump loads the whole image-text model
    (language_model_only off: lm-eval's own load is the text-only class), or the store already holds this exact
    request's result."""
    from portcheck.workflow.handoff import offer

    params = _handover_params(config, target_name) if parse_target(target_name).engine == "hf" else None
    if params is None or not params["settings"]["language_model_only"]:
        return {}
    return offer(store, evaluation_request(target_name, params, manifest, data_files()),
                 lambda engine: evaluate_on_engine(target_name, engine, params["accuracy"]))


def _handover_params(config: dict, target_name: str) -> dict | None:
    """The params rule evaluate_accuracy will be given, or None where no other job can do its work (no job asks for
    the evaluation, or the target is in its own Python environment: lm-eval is portcheck's)."""
    from portcheck.env.versions import distribution_version
    from portcheck.workflow.version_params import result_versions

    if not asked_for(config, target_name) or config["targets"][target_name].get("python_env"):
        return None
    return evaluation_params(config, target_name, result_versions(target_name), None,
                             distribution_version("lm_eval", "lm-eval"))


def asked_for(config: dict, target_name: str) -> bool:
    """Whether the workflow asks for the target's evaluation: the accuracy stage on, the target not left out (the
    bf16 floor without accuracy.floor), and for the reference, another target evaluated against it."""
    from portcheck.config import enabled_targets

    if not config["accuracy"]["enabled"]:
        return False
    targets, reference = enabled_targets(config), config["reference"]
    off = references_off(targets, reference, "accuracy", config["accuracy"])
    compared = [t for t in targets if t != reference and t not in off]
    return target_name in compared or (target_name == reference and bool(compared))


def evaluate_on_server(target_name: str, port: int, model_dir, settings, accuracy: dict) -> dict:
    """The evaluation on a server that is already up (the serving check's): the record evaluate_accuracy writes."""
    tasks = load_tasks(list(accuracy["tasks"]))
    started = time.perf_counter()
    results = _run(tasks, "local-completions", served_model_args(port, model_dir, settings, accuracy), accuracy)
    return accuracy_record(target_name, accuracy, {"port": port, "started_by": "check_serving"}, results, started)


def evaluate_on_engine(target_name: str, engine, accuracy: dict) -> dict:
    """The evaluation with the model an hf engine has loaded (the dump job's): the record evaluate_accuracy writes,
    which names the job that loaded the model. A model with a drill's fault injected is not the one lm-eval would
    load: refused, so the evaluation job loads its own."""
    if engine.injected_fault is not None:
        raise PortcheckError(f"{target_name}'s loaded model has a drill's fault injected; the evaluation loads its own")
    from lm_eval.models.huggingface import HFLM

    tasks = load_tasks(list(accuracy["tasks"]))
    started = time.perf_counter()
    model = HFLM(pretrained=engine.model, tokenizer=str(engine.model_dir), batch_size=1,
                 trust_remote_code=engine.settings.trust_remote_code)
    results = _run(tasks, model, {}, accuracy)
    return {**accuracy_record(target_name, accuracy, None, results, started), "model_loaded_by": "dump_logits"}


def accuracy_record(target_name: str, accuracy: dict, server: dict | None, results: dict, started: float) -> dict:
    return {"target": target_name, "lm_eval": _version(), "limit": accuracy["limit"],
            "num_fewshot": accuracy["num_fewshot"], "server": server,
            "tasks": task_records(results), "seconds": round(time.perf_counter() - started, 3)}


def hf_model_args(target: Target, model_dir, settings) -> dict[str, Any]:
    from portcheck.engines.devices import require_backend

    require_backend(target.device)
    return {"pretrained": str(model_dir), "dtype": target.torch_dtype_name, "device": target.torch_device,
            "trust_remote_code": settings.trust_remote_code}


def served_model_args(port: int, model_dir, settings, accuracy: dict) -> dict[str, Any]:
    """lm-eval's local-completions on the server: prompts as token ids from the checkpoint's own tokenizer (the
    text the hf model scores, tokenised the same way)."""
    from portcheck.benchmarks.serve_sweep import SERVED_MODEL_NAME

    return {"base_url": f"http://127.0.0.1:{port}/v1/completions", "model": SERVED_MODEL_NAME,
            "tokenizer": str(model_dir), "tokenizer_backend": "huggingface", "tokenized_requests": True,
            "num_concurrent": accuracy["num_concurrent"], "max_retries": 1, "timeout": accuracy["request_timeout_s"],
            "trust_remote_code": settings.trust_remote_code, "max_length": settings.max_model_len or 2048}


def _run_served(target_name, model_dir, settings, tasks, accuracy, serve, server_log, python_env):
    from portcheck.benchmarks.serving import start_server
    from portcheck.engines.vllm.engine_args import server_env

    env = server_env(parse_target(target_name), model_dir, settings)
    server, port, command, ready_s = start_server(target_name, model_dir, settings, serve, server_log, env,
                                                  python_env=python_env)
    try:
        results = _run(tasks, "local-completions", served_model_args(port, model_dir, settings, accuracy), accuracy)
    finally:
        server.__exit__(None, None, None)
    return results, {"port": port, "ready_s": round(ready_s, 3)}


def _run(tasks: dict, model, model_args: dict, accuracy: dict) -> dict:
    """lm-eval on `model`: a registered model's name built from `model_args`, or a model lm-eval has already built.
    The tasks are built already, so lm-eval gets a task manager that indexes none of its own task files (its default
    one reads them all: 6-9 s on 2 cores, for each evaluation)."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    return lm_eval.simple_evaluate(model=model, model_args=model_args, tasks=list(tasks.values()),
                                   task_manager=TaskManager(include_defaults=False),
                                   num_fewshot=accuracy["num_fewshot"], limit=accuracy["limit"], batch_size=1,
                                   log_samples=True, bootstrap_iters=100, random_seed=0, numpy_random_seed=0,
                                   torch_random_seed=0, fewshot_random_seed=0)


def _version() -> str:
    from importlib.metadata import version

    return version("lm_eval")


def task_records(results: dict) -> dict[str, dict]:
    """Per task: its output type, primary metric and score, and each item (doc id, the answer given, correct),
    for the first filter of the task (lm-eval logs one sample per item and filter)."""
    records = {}
    for name, samples in results["samples"].items():
        if not samples:
            continue
        metric, filter_name = samples[0]["metrics"][0], samples[0]["filter"]
        items = [item_record(sample, metric) for sample in samples if sample["filter"] == filter_name]
        items.sort(key=lambda item: item["doc_id"])
        figures = results["results"][name]
        records[name] = {"metric": metric, "filter": filter_name, "score": _number(figures.get(f"{metric},{filter_name}")),
                         "stderr": _number(figures.get(f"{metric}_stderr,{filter_name}")),
                         "n": len(items), "items": items}
    return records


def _number(value) -> float | None:
    """lm-eval writes "N/A" where it has no figure."""
    return float(value) if isinstance(value, (int, float)) else None


def item_record(sample: dict, metric: str) -> dict[str, Any]:
    """One item: for a multiple-choice task the index of the choice with the highest log-likelihood (and each
    choice's log-likelihood), for a generation task the filtered answer text."""
    responses = sample["filtered_resps"]
    if responses and isinstance(responses[0], (list, tuple)):  # loglikelihood: [(logprob, is_greedy), ...]
        loglikelihoods = [float(r[0]) for r in responses]
        answer = max(range(len(loglikelihoods)), key=loglikelihoods.__getitem__)
        extra = {"loglikelihoods": loglikelihoods}
    else:
        answer = responses[0] if isinstance(responses, list) else responses
        extra = {}
    doc = sample.get("doc") or {}
    return {"doc_id": int(sample["doc_id"]), "id": doc.get("id"), "answer": answer,
            "correct": float(sample[metric]), **extra}
