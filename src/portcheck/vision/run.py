"""Rule dump_vision: one engine start of the whole model (vision tower included) on the image prompts, writing the
text rows after each image as a logit dump (the seed prompts' format, so the same comparison applies) and the vision
tower's per-block outputs beside them. Images and the checkpoint are checked before the engine starts."""

from __future__ import annotations

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
from portcheck.vision.prompts import build_input, load_processor, max_pixels, vision_facts, vision_problem


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
    inputs = prepare_inputs(model_dir, settings, vision, seed)
    settings = replace(settings, language_model_only=False)  # this job's run only: the whole model
    started = time.perf_counter()
    with make_engine(target, model_dir, settings) as engine:
        scored = engine.score_images(inputs)
        facts = engine.vision_facts()
    meta = {"target": target_name, "model_sha": model_sha(model_dir), "tokenizer_sha": tokenizer_sha(model_dir),
            "prompts_sha": sha256_json([[i.input_ids, _pixels_sha(i.pixel_values)] for i in inputs]),
            "prompts": [i.name for i in inputs], "settings": asdict(settings), "vision": {
                **facts, "image_spans": [i.image_spans for i in inputs], "text_start": [i.text_start for i in inputs],
                "image_grid_thw": [i.image_grid_thw.tolist() for i in inputs],
                "encode_seconds": [round(s.encode_seconds, 4) for s in scored],
                "run_seconds": round(time.perf_counter() - started, 3)}}
    write_dump(rows_path, [s.scores for s in scored], None, meta)
    write_blocks(blocks_path, scored, meta)


def _pixels_sha(pixels: np.ndarray) -> str:
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(pixels, np.float32).tobytes()).hexdigest()


