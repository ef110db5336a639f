"""Rule dump_vision: one engine start of the whole model (vision tower included) on the image prompts, writing the
text rows after each image as a logit dump (the seed prompts' format, so the same comparison applies) and the vision
tower's per-block outputs beside them. Images and the checkpoint are checked before the engine starts."""

from __future__ import annotations

import re
import sys
import time
from dataclasses import asdict, replace

import numpy as np

from portcheck.dump.logits_file import write_dump
from portcheck.engines.base import check_prompt_lengths
from portcheck.engines.factory import make_engine
from portcheck.errors import PortcheckError
from portcheck.hashing import sha256_json
from portcheck.model.checkpoint import model_sha, tokenizer_sha
from portcheck.targets import parse_target
from portcheck.vision.blocks_file import write_blocks, write_not_run
from portcheck.vision.engines import IMAGE_ENGINES, NOT_WIRED
from portcheck.vision.images import image_prompts
from portcheck.vision.prompts import build_input, image_spans, load_processor, max_pixels, vision_facts, vision_problem


def prepare_inputs(model_dir, settings, vision: dict, seed: int):
    """The image prompts as model inputs, or a PortcheckError before any engine starts."""
    problem = vision_problem(model_dir, vision)
    if problem:
        raise PortcheckError(problem)
    processor = load_processor(model_dir, settings.trust_remote_code)
    prompts = image_prompts(vision, seed, max_pixels(processor))
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=settings.trust_remote_code)
    inputs = [build_input(p, tokenizer, vision_facts(model_dir), processor) for p in prompts]
    check_prompt_lengths([i.input_ids for i in inputs], settings.max_model_len,
                         [f"image prompt {i.name}" for i in inputs])
    return inputs


def dump_vision(target_name: str, model_dir, settings, vision: dict, seed: int, rows_path, blocks_path) -> None:
    target = parse_target(target_name)
    if target.engine not in IMAGE_ENGINES:
        raise PortcheckError(f"{target_name}: {NOT_WIRED}")
    problem = vision_problem(model_dir, vision)
    if problem and not vision["images"]:
        # the drawn images only, on a model without a vision tower or processor settings (the dense tiny Qwen3):
        # nothing the user asked for is lost, so it is said not run; the user's own images are refused below
        write_not_run(rows_path, blocks_path, problem)
        return
    if target.engine == "vllm" and not settings.enforce_eager:
        # vLLM's worker captures the rows and blocks with Python wrappers, which a captured graph does not call
        write_not_run(rows_path, blocks_path, "vLLM in graph mode (enforce_eager off): the worker's capture of the "
                      "rows and vision blocks is not called in a graph; set enforce_eager: true on this target")
        return
    inputs = prepare_inputs(model_dir, settings, vision, seed)
    settings = replace(settings, language_model_only=False)  # this job's run only: the whole model
    started = time.perf_counter()
    try:
        with make_engine(target, model_dir, settings) as engine:
            scored = engine.score_images(inputs)
            facts = engine.vision_facts()
    except PortcheckError as exc:
        if target.engine != "vllm":
            raise
        # The stack could not run image prompts (measured: vLLM 0.23 with transformers 5.25 fails its own
        # multimodal processor at engine start): the target fails the check, and the report still renders.
        print(f"{target_name}: {exc}", file=sys.stderr)  # the whole message, log tail included, to the job's log
        write_not_run(rows_path, blocks_path, f"vLLM could not run the image prompts: {_first_error(str(exc))}",
                      status="failed")
        return
    image_token = vision_facts(model_dir)["image_token_id"]
    meta = {"target": target_name, "model_sha": model_sha(model_dir), "tokenizer_sha": tokenizer_sha(model_dir),
            "prompts_sha": sha256_json([[i.input_ids, _pixels_sha(i.pixel_values)] for i in inputs]),
            "prompts": [i.name for i in inputs], "settings": asdict(settings), "vision": {
                **facts, "text_start": [i.text_start for i in inputs],
                # the layout the engine ran: vLLM expands the image tokens itself, transformers takes them as built
                "image_spans": [i.image_spans if s.input_ids is None else image_spans(s.input_ids, image_token)
                                for i, s in zip(inputs, scored)],
                "image_grid_thw": [i.image_grid_thw.tolist() for i in inputs],
                "encode_seconds": [round(s.encode_seconds, 4) for s in scored],
                # hf: the model from processed pixels; vllm: the request from the images, its processor included
                "first_token_seconds": [s.first_token_seconds and round(s.first_token_seconds, 4) for s in scored],
                "run_seconds": round(time.perf_counter() - started, 3)}}
    write_dump(rows_path, [s.scores for s in scored], None, meta)
    write_blocks(blocks_path, scored, meta)


def _first_error(message: str) -> str:
    """The message's first line, and the first error its log tail names (the root cause, where the first line
    says only that the engine failed)."""
    first, *rest = message.splitlines() or [""]
    cause = next((line.split("] ")[-1].strip() for line in rest if re.search(r"\w+(Error|Exception): ", line)), "")
    return f"{first[:300]}" + (f"; first error in its log: {cause[:300]}" if cause else "")


def _pixels_sha(pixels: np.ndarray) -> str:
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(pixels, np.float32).tobytes()).hexdigest()


