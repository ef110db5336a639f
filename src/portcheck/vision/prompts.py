"""Image prompts as model inputs: the image processor the checkpoint names (preprocessor_config.json) and the token
layout of Qwen3.5: per image <|vision_start|>, one <|image_pad|> per merged group of patches, <|vision_end|>; then
the question. The rows compared are the text after the last image (from <|vision_end|>, whose row predicts the
question's first token)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from portcheck.errors import PortcheckError
from portcheck.vision.images import ImagePrompt

PROCESSOR_FILE = "preprocessor_config.json"


@dataclass
class VisionInput:
    name: str
    input_ids: list[int]
    pixel_values: np.ndarray  # float32 [patches, channels x temporal x patch x patch]
    image_grid_thw: np.ndarray  # int64 [images, 3]
    image_spans: list[tuple[int, int]]  # (first <|image_pad|> position, count) per image
    text_start: int  # the first compared row: the last <|vision_end|>
    images: list  # the PIL images (vLLM takes them and runs its own processor)

    def unexpanded_ids(self) -> list[int]:
        """The ids with one <|image_pad|> per image, as vLLM takes them: its processor expands each into the
        image's tokens itself, and the ids it ran are checked against input_ids (the layout check)."""
        ids, skip = list(self.input_ids), {start + i for start, count in self.image_spans for i in range(1, count)}
        return [token for position, token in enumerate(ids) if position not in skip]


def image_spans(ids: list[int], image_token: int) -> list[tuple[int, int]]:
    """(first position, count) of each run of `image_token` in ids: the layout an engine actually ran."""
    spans: list[tuple[int, int]] = []
    for position, token in enumerate(ids):
        if token != image_token:
            continue
        if spans and sum(spans[-1]) == position:
            spans[-1] = (spans[-1][0], spans[-1][1] + 1)
        else:
            spans.append((position, 1))
    return spans


def vision_facts(model_dir) -> dict | None:
    """The checkpoint's vision tower facts from config.json; None where it has none."""
    config = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    tower = config.get("vision_config")
    if not tower:
        return None
    ids = {key: config.get(key) for key in ("image_token_id", "vision_start_token_id", "vision_end_token_id")}
    missing = [key for key, value in ids.items() if value is None]
    if missing:
        raise PortcheckError(f"{model_dir}/config.json has a vision_config but no {missing}: the image tokens cannot "
                             "be laid out; use the checkpoint's own config.json")
    return {**ids, "merge": tower.get("spatial_merge_size", 2), "depth": tower.get("depth")}


def vision_problem(model_dir, vision: dict) -> str | None:
    """Why this checkpoint cannot run the vision check, or None. A model without a vision tower that is asked for
    the user's images is an error; with the generated images only the check is reported not run."""
    if vision_facts(model_dir) is None:
        return (f"the model in {model_dir} has no vision tower (config.json has no vision_config): set "
                "vision.enabled: false" + (" and remove vision.images" if vision["images"] else ""))
    if not (Path(model_dir) / PROCESSOR_FILE).is_file():
        return (f"{model_dir} has no {PROCESSOR_FILE}, the image processor's settings: take it from the model's "
                "repository (Qwen/Qwen3.5-0.8B-Base ships one) or set vision.enabled: false")
    return None


def load_processor(model_dir, trust_remote_code: bool = False):
    from transformers import AutoImageProcessor

    return AutoImageProcessor.from_pretrained(str(model_dir), trust_remote_code=trust_remote_code)


def max_pixels(processor) -> int | None:
    size = getattr(processor, "size", None) or {}
    return size.get("longest_edge") or getattr(processor, "max_pixels", None)


def build_input(prompt: ImagePrompt, tokenizer, facts: dict, processor) -> VisionInput:
    """Pixel values and token ids of one image prompt."""
    out = processor(images=prompt.images, return_tensors="np")
    grid = np.asarray(out["image_grid_thw"], dtype=np.int64)
    ids, spans = [], []
    for thw in grid:
        count = int(np.prod(thw)) // facts["merge"] ** 2
        ids.append(facts["vision_start_token_id"])
        spans.append((len(ids), count))
        ids += [facts["image_token_id"]] * count
        ids.append(facts["vision_end_token_id"])
    text_start = len(ids) - 1
    ids += list(tokenizer(prompt.question, add_special_tokens=False)["input_ids"])
    return VisionInput(prompt.name, ids, np.asarray(out["pixel_values"], dtype=np.float32), grid, spans, text_start,
                       list(prompt.images))
