"""The engine modes: how a run is named (`<target>+<mode>`, e.g. `cpu-vllm-bf16+chunked`), what each mode changes
in the target's engine settings (through settings.extra["vllm_kwargs"], so the one settings -> vLLM mapping in
engines/vllm/engine_args.py still applies), and what counts as proof that it ran. Import-light: the config
validation reads it while Snakemake parses the workflow."""

from __future__ import annotations

import dataclasses
import re

from portcheck.engines.settings import FULL_VOCAB_MAX_ENTRIES, EngineSettings
from portcheck.errors import PortcheckError
from portcheck.targets import parse_target

# mode -> what it is and which engine counter proves it (the report's method note).
MODES = {
    "graph": "compiled graphs (torch.compile; CUDA/ACL graphs where the platform captures them): enforce_eager off. "
             "Proof: vLLM's compilation counter shows graphs captured and the worker counted their replays during "
             "the workload; compiled without replay (vLLM's CPU backend has no graph replay) is inconclusive",
    "prefix-cache": "prefix caching on; the workload's prompts are prefilled once to fill the cache, then decoded, "
                    "reading it. Proof: cached prompt tokens vLLM reports for the decode's requests",
    "chunked": "chunked prefill with max_num_batched_tokens = modes.chunk_tokens, so a prompt's Gated DeltaNet state "
               "crosses prefill passes. Proof: the worker counted forward passes no longer than the chunk while the "
               "prompts are longer",
    "mtp": "speculative decoding with the model's MTP head (modes.spec_tokens draft tokens). Proof: vLLM's "
           "spec-decode counters (drafts, accepted tokens)",
    "batch": "the workload's sequences decoded in one batch of modes.batch_size (with other prompts after the same "
             "prefix), and each alone in the same engine start. Proof: the worker counted decode passes of "
             "batch_size tokens (one step of every sequence) in the batch and of 1 token alone",
}
# The {mode} wildcard of the mode rules (the base run, "base", is dump_logits_with_mode_base's and never matches).
MODE_PATTERN = "|".join(re.escape(mode) for mode in MODES)


@dataclasses.dataclass(frozen=True)
class ModeRun:
    name: str  # cpu-vllm-bf16+chunked
    target: str
    mode: str


def parse_run(name: str) -> ModeRun:
    target, plus, mode = name.partition("+")
    if not plus or not mode:
        raise PortcheckError(f"mode run {name!r} is not <target>+<mode> (e.g. 'cpu-vllm-bf16+chunked')")
    if mode not in MODES:
        raise PortcheckError(f"mode run {name!r}: unknown mode {mode!r}; known modes: {', '.join(MODES)}")
    parse_target(target)
    return ModeRun(name, target, mode)


def run_problems(config: dict) -> list[str]:
    """modes.runs must name known modes of vLLM targets (a run of a target that is not enabled is not run); a batch
    run needs the workload decoded alone (modes.batched: false)."""
    if not config["modes"]["enabled"]:
        return []
    problems = []
    for name in config["modes"]["runs"]:
        try:
            run = parse_run(name)
        except PortcheckError as exc:
            problems.append(f"modes.runs: {exc}")
            continue
        if parse_target(run.target).engine != "vllm":
            problems.append(f"modes.runs: {name}: modes are vLLM engine modes and {run.target} runs the hf engine; "
                            "name a vllm target (e.g. cpu-vllm-bf16+chunked)")
        elif run.mode == "batch" and config["modes"]["batched"]:
            problems.append(f"modes.runs: {name}: the batch mode is set against the workload decoded one prompt at "
                            "a time, and modes.batched decodes the base configuration's workload as one batch (a "
                            "kernel wrong only in batches would spoil both); set modes.batched: false to run it")
    return problems


def active_runs(config: dict) -> tuple[list[str], list[str]]:
    """(runs to do, runs not run because their target is not enabled)."""
    if not config["modes"]["enabled"]:
        return [], []
    runs = [parse_run(name) for name in dict.fromkeys(config["modes"]["runs"])]
    enabled = {name for name, target in config["targets"].items() if target["enabled"]}
    return [r.name for r in runs if r.target in enabled], [r.name for r in runs if r.target not in enabled]


def mode_settings(settings: EngineSettings, mode: str, modes: dict) -> EngineSettings:
    """The target's settings with the mode on; every mode run keeps vLLM's stat counters on (its proof)."""
    engine = dict(settings.extra.get("vllm_kwargs") or {})
    engine["disable_log_stats"] = False
    changes: dict = {}
    if mode == "graph":
        changes["enforce_eager"] = False
    elif mode == "prefix-cache":
        engine["enable_prefix_caching"] = True
    elif mode == "chunked":
        engine["enable_chunked_prefill"] = True
        changes["max_num_batched_tokens"] = int(modes["chunk_tokens"])
    elif mode == "mtp":
        engine["speculative_config"] = {"method": "mtp", "num_speculative_tokens": int(modes["spec_tokens"])}
    elif mode == "batch" and settings.max_num_seqs and settings.max_num_seqs < int(modes["batch_size"]):
        changes["max_num_seqs"] = int(modes["batch_size"])  # else vLLM would split the batch
    return dataclasses.replace(settings, **changes, extra={**settings.extra, "vllm_kwargs": engine})


def check_mode_model(mode: str, model_text: dict, model_dir, spec_tokens: int = 1) -> None:
    """A mode the model cannot run is refused before the engine starts."""
    if mode != "mtp":
        return
    layers = int(model_text.get("mtp_num_hidden_layers") or 0)
    if not layers:
        raise PortcheckError(f"mode mtp needs MTP weights, and the model in {model_dir} has none "
                             "(config.json mtp_num_hidden_layers is 0 or absent); remove the +mtp run")
    if spec_tokens > layers and spec_tokens % layers:  # vLLM's SpeculativeConfig rule (n_predict = MTP layers)
        fits = ", ".join(str(n) for n in (*range(1, layers + 1), 2 * layers))
        raise PortcheckError(f"modes.spec_tokens {spec_tokens} cannot be served by the model in {model_dir}: its "
                             f"{layers} MTP layers draft in rounds of {layers}, so vLLM needs a count up to {layers} "
                             f"or a multiple of it; set modes.spec_tokens to one of {fits}, ...")


# -- where vLLM's own log-probs are still needed, and when the full vocabulary of them cannot be afforded ------------


def fallback_calls(mode: str, eager: bool, modes: dict | None, corpus: dict | None,
                   decode: dict | None) -> dict[str, int]:
    """Where a vLLM engine start (mode "base": the dump's, which decodes the mode workload where `modes` is given)
    keeps vLLM's own log-probs because its worker cannot make rows from the model's logits (graph mode; speculative
    or batched decoding): what -> positions per engine call. The seed prompts are left out: they are scored in
    batches under the limit, and a single prompt over it is refused by the engine before any forward pass."""
    graph = mode == "graph" or not eager
    calls = {}
    if graph and corpus:
        calls["corpus windows"] = int(corpus["window_length"])
    if graph and decode:
        calls["decode steps"] = int(decode["max_tokens"])
    if modes and (graph or mode == "mtp"):
        calls["mode workload steps"] = int(modes["max_tokens"])
    if modes and mode == "batch":
        calls["batch decode steps"] = max(int(modes["batch_size"]), int(modes["prompts"])) * int(modes["max_tokens"])
    return calls


def full_vocab_problem(run: str, target: str, logprobs_topk: int, vocab: int | None, calls: dict[str, int],
                       limit: int = FULL_VOCAB_MAX_ENTRIES) -> str:
    """Why `run` would fail at this vocabulary ("" where it would not): logprobs_topk -1 asks vLLM for the full
    vocabulary wherever its own log-probs are kept (fallback_calls), one Python object per id and position."""
    if logprobs_topk != -1 or not vocab:
        return ""
    over = {what: positions * vocab for what, positions in calls.items() if positions * vocab > limit}
    if not over:
        return ""
    return (f"{run}: targets.{target}.logprobs_topk is -1 (vLLM's full-vocabulary log-probs) and its "
            f"{', '.join(over)} keep vLLM's own log-probs (graph mode, speculative or batched decoding: vLLM's worker "
            f"cannot make rows from the model's logits there): up to {max(over.values()):,} log-probs per engine call "
            f"at {vocab:,} ids, over the {limit:,} a host holds as Python objects; set targets.{target}.logprobs_topk: "
            "20 (there the KLD is then a lower bound), or remove the run")


def full_vocab_problems(config: dict, vocab: int | None) -> list[str]:
    """Config validation: every enabled vLLM target and mode run that full_vocab_problem refuses at `vocab` (the
    model's vocabulary where it is known before any download: a local checkpoint's config.json)."""
    runs, _ = active_runs(config)
    corpus = config["corpus"] if config["corpus"]["enabled"] else None
    decode = config["decode"] if config["decode"]["enabled"] else None
    problems = []
    for name, target in config["targets"].items():
        if not target["enabled"] or parse_target(name).engine != "vllm":
            continue
        own_runs = [parse_run(run) for run in runs if parse_run(run).target == name]
        modes = config["modes"] if own_runs else None
        checks = [(name, fallback_calls("base", target.get("enforce_eager", True), modes,
                                        corpus, decode))]
        checks += [(run.name, fallback_calls(run.mode, target.get("enforce_eager", True), modes, corpus, None))
                   for run in own_runs]
        problems += [problem for run, calls in checks
                     if (problem := full_vocab_problem(run, name, target.get("logprobs_topk", 20), vocab, calls))]
    return problems
