"""The engine modes: how a run is named (`<target>+<mode>`, e.g. `cpu-vllm-bf16+chunked`), what each mode changes
in the target's engine settings (through settings.extra["vllm_kwargs"], so the one settings -> vLLM mapping in
engines/vllm/engine_args.py still applies), and what counts as proof that it ran. Import-light: the config
validation reads it while Snakemake parses the workflow."""

from __future__ import annotations

import dataclasses
import re

from portcheck.engines.settings import EngineSettings
from portcheck.errors import PortcheckError
from portcheck.targets import parse_target

# mode -> what it is and which engine counter proves it (the report's method note).
MODES = {
    "graph": "compiled graphs (torch.compile; CUDA/ACL graphs where the platform captures them): enforce_eager off. "
             "Proof: the worker's compilation counter saw graphs, and the compilation mode in effect",
    "prefix-cache": "prefix caching on; the workload runs twice and the second pass, which reads the cache, is "
                    "measured. Proof: cached prompt tokens vLLM reports for the second pass's requests",
    "chunked": "chunked prefill with max_num_batched_tokens = modes.chunk_tokens, so a prompt's Gated DeltaNet state "
               "crosses prefill passes. Proof: the worker counted forward passes no longer than the chunk while the "
               "prompts are longer",
    "mtp": "speculative decoding with the model's MTP head (modes.spec_tokens draft tokens). Proof: vLLM's "
           "spec-decode counters (drafts, accepted tokens)",
    "batch": "the workload's sequences decoded in one batch of modes.batch_size (with other prompts after the same "
             "prefix), and each alone in the same engine start. Proof: the worker counted decode passes of "
             "batch_size tokens (one step of every sequence) in the batch and of 1 token alone",
}
# The {mode} wildcard of the mode rules (the base run, "base", is dump_logits' and never matches).
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
    """modes.runs must name known modes of vLLM targets (a run of a target that is not enabled is not run)."""
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


def check_mode_model(mode: str, model_text: dict, model_dir) -> None:
    """A mode the model cannot run is refused before the engine starts."""
    if mode == "mtp" and not int(model_text.get("mtp_num_hidden_layers") or 0):
        raise PortcheckError(f"mode mtp needs MTP weights, and the model in {model_dir} has none "
                             "(config.json mtp_num_hidden_layers is 0 or absent); remove the +mtp run")
