"""Rule score_mtp: the acceptance the checkpoint's MTP weights should reach on an mtp run's own tokens. The reference
engine (transformers) gives the main model's hidden states along prompt + decoded tokens; the MTP head run in
PyTorch from the `mtp.*` weights (model/mtp.py) replays vLLM's speculative rounds along them (drafts from the
reference's states, the target's tokens deciding what is accepted); the counts, in vLLM's definitions, are the
reference acceptance per draft position that compare_mode holds the run's measured acceptance to."""

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
              out_path: str | Path, spec_tokens: int) -> None:
    decoded, prompts, tokens = decoded_tokens(decode_path)
    target = parse_target(reference)
    head = {"target": decoded.meta.get("target"), "reference": reference, "spec_tokens": int(spec_tokens),
            "model_sha": model_sha(model_dir)}
    weights = mtp_weights(model_dir)  # refused before the engine starts where the checkpoint has none
    why_not = unsupported_head(weights) or (
        f"the reference MTP runs on the reference's transformers model, and the reference {reference} runs "
        f"{target.engine}" if target.engine != "hf" else None)
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
                          "run_seconds": round(time.perf_counter() - started, 3)})


def _add(total, value):
    if total is None:
        return value
    return [a + b for a, b in zip(total, value)] if isinstance(value, list) else total + value
