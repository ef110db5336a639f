"""Rule score_mtp: the acceptance the checkpoint's MTP weights should reach on an mtp run's own tokens. The reference
engine (transformers) gives the main model's hidden states along prompt + decoded tokens; the MTP head run in
PyTorch from the `mtp.*` weights (model/mtp.py) replays vLLM's speculative rounds along them (drafts from the
reference's states, the target's tokens deciding what is accepted); the counts, in vLLM's definitions, are the
reference acceptance per draft position that compare_mode holds the run's measured acceptance to.

Rule measure_mtp runs the same on the reference's own greedy decode: the MTP head's acceptance as the weights make
it, for the model section, with no vLLM run (a checkpoint without an MTP head is then "not measured", not refused)."""

from __future__ import annotations

import time
from pathlib import Path

from portcheck.atomic import write_json
from portcheck.dump.decode_reference import decoded_tokens
from portcheck.engines.factory import make_engine
from portcheck.engines.settings import EngineSettings
from portcheck.model.checkpoint import model_sha
from portcheck.model.mtp import build_reference_mtp, mtp_weights, simulate_rounds, unsupported_head
from portcheck.modes.run import acceptance
from portcheck.targets import parse_target


def score_mtp(reference: str, model_dir: str | Path, settings: EngineSettings, decode_path: str | Path,
              out_path: str | Path, spec_tokens: int, head_required: bool = True) -> None:
    decoded, prompts, tokens = decoded_tokens(decode_path)
    target = parse_target(reference)
    head = {"target": decoded.meta.get("target"), "reference": reference, "spec_tokens": int(spec_tokens),
            "model_sha": model_sha(model_dir)}
    weights = mtp_weights(model_dir, required=head_required)  # refused before the engine starts
    why_not = _why_not_replayed(weights, model_dir, reference, target.engine)
    if why_not:  # the run is then held to modes.mtp_acceptance.golden, or not judged
        write_json(out_path, {**head, "status": "not measured", "reason": why_not})
        return
    started = time.perf_counter()
    with make_engine(target, model_dir, settings) as engine:
        model = engine.model
        mtp = build_reference_mtp(model.config.get_text_config(), weights, model.get_input_embeddings().weight,
                                  model.get_output_embeddings().weight)
        per_sequence = [simulate_rounds(model, mtp, p + t, len(p), int(spec_tokens)) for p, t in zip(prompts, tokens)]
    total: dict = {}
    for counts in per_sequence:
        total = {name: _add(total.get(name), value) for name, value in counts.items()}
    write_json(out_path, {**head, "status": "measured", **acceptance(total), "per_sequence": per_sequence,
                          "repeated_token_share": repeated_token_share(tokens),
                          "run_seconds": round(time.perf_counter() - started, 3)})


def repeated_token_share(tokens: list[list[int]]) -> float | None:
    """The share of decoded tokens equal to the one before them: a decode that loops on one token is easy to draft,
    so an acceptance read on it says less about the head."""
    pairs = [(a, b) for sequence in tokens for a, b in zip(sequence, sequence[1:])]
    return sum(a == b for a, b in pairs) / len(pairs) if pairs else None


def _why_not_replayed(weights: dict, model_dir, reference: str, engine: str) -> str | None:
    if not weights:
        return f"the checkpoint in {model_dir} has no mtp.* weights (no MTP head)"
    if problem := unsupported_head(weights):
        return problem
    if engine != "hf":
        return (f"the reference MTP runs on the reference's transformers model, and the reference {reference} runs "
                f"{engine}")
    return None


def _add(total, value):
    if total is None:
        return value
    return [a + b for a, b in zip(total, value)] if isinstance(value, list) else total + value
