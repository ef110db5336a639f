"""Compact storage at the real vocabulary (make bench-compact): figures printed and written, nothing asserted.

Qwen3.5-0.8B's weights cannot be downloaded here, so this builds a checkpoint with its text shape (24 layers, hidden
1024, Gated DeltaNet 16 x 128 heads, 248,320-token vocabulary) from random weights, runs it in fp32 (the reference)
and bf16 (the target: bf16-level divergence) on random token windows, writes both sides' scores as compact dumps
(dump/compact.py, the workflow's own writer) and as whole rows, and sets the compact KLD (estimate and lower bound)
against the exact one. Random weights give near-uniform next-token distributions, unlike a trained model, so the
logits are also measured scaled (through the final norm, as the embedded model is calibrated) to a peaked regime.

Writes src/portcheck/dump/data/compact_error_real_shape.json, which the report's method note cites.

    python scripts/bench_compact.py [--windows 2 --window-length 256 --topk 256 --sample 128]

--vllm DIR measures instead what vLLM's rows cost at this vocabulary: it writes the same shape as a checkpoint vLLM
loads (Qwen3_5ForConditionalGeneration, the embedded model's tokenizer and vision tower, random weights) into DIR
(kept: model.source local can point at it), starts the vLLM CPU engine once, and times the seed prompts' dump from
the worker's whole raw logits rows against the old top-k log-probs, and a decode's compact records against vLLM's
top-k, printing the figures (time, bytes) as JSON.

    python scripts/bench_compact.py --vllm /tmp/real-shape [--topk-logprobs 20 --decode-steps 32]
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
OUT = ROOT / "src" / "portcheck" / "dump" / "data" / "compact_error_real_shape.json"
REAL_SHAPE = {  # reference.md section 1: Qwen3.5-0.8B's text_config
    "hidden_size": 1024, "intermediate_size": 3584, "num_hidden_layers": 24, "num_attention_heads": 8,
    "num_key_value_heads": 2, "head_dim": 256, "linear_num_key_heads": 16, "linear_num_value_heads": 16,
    "linear_key_head_dim": 128, "linear_value_head_dim": 128,
}
REAL_VOCAB = 248320
REAL_VISION = {  # reference.md section 1: its vision_config (depth 12, hidden 768, 12 heads, intermediate 3072)
    "vision_depth": 12, "vision_hidden_size": 768, "vision_num_heads": 12, "vision_intermediate_size": 3072,
    "vision_num_position_embeddings": 2304,
}
PEAKED_TOP1 = 0.5  # mean top-1 probability of the scaled regime


def build_models(seed: int):
    import torch
    from transformers.models.qwen3_5 import Qwen3_5ForCausalLM

    from portcheck.model.tiny import tiny_config

    torch.manual_seed(seed)
    text = tiny_config(REAL_VOCAB, **REAL_SHAPE).text_config
    model = Qwen3_5ForCausalLM(text).eval()
    return model, sum(p.numel() for p in model.parameters())


def write_real_shape_checkpoint(out: Path, seed: int, vision: dict | None = None) -> Path:
    """The real text shape as a checkpoint vLLM loads, built as portcheck.model.tiny builds the embedded model
    (its tokenizer, special ids, vision tower and MTP head) with random weights; kept where it is complete.
    vision: the tower's shape (REAL_VISION: the real 12 blocks), the embedded model's 2-block tower without."""
    import torch
    from transformers.models.qwen3_5 import Qwen3_5ForConditionalGeneration

    from portcheck.model import tiny

    if (out / "model.safetensors").is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    tok = tiny.train_tokenizer(tiny.corpus_text())
    specials = tiny.special_token_ids(tok.token_to_id(tiny.QWEN_SPECIAL_TOKENS[0]))
    config = tiny.tiny_config(REAL_VOCAB, **REAL_SHAPE, **(vision or {}), **specials)
    torch.manual_seed(seed)
    model = Qwen3_5ForConditionalGeneration(config).eval()
    tiny._save_weights(model, out / "model.safetensors", tiny._mtp_tensors(config, seed))
    tiny._save_configs(config, out)
    tiny._save_tokenizer(tok, out, config.text_config.max_position_embeddings)
    return out


def measure_vllm_rows(model_dir: Path, topk: int, decode_steps: int, decode_prompts: int = 4) -> dict:
    """One vLLM CPU engine start on `model_dir`: the seed prompts' dump (whole raw logits rows from the worker vs
    vLLM's top-k log-probs) and a decode (compact records from the worker vs vLLM's top-k), timed and sized."""
    from portcheck.config import load_prompts, load_yaml
    from portcheck.dump.compact import Storage
    from portcheck.dump.logits_file import write_dump
    from portcheck.dump.run import decode_rows, load_tokenizer, rows_meta, tokenize, write_decode_dump
    from portcheck.engines.factory import make_engine
    from portcheck.engines.settings import EngineSettings
    from portcheck.targets import parse_target

    prompts = load_prompts(load_yaml(ROOT / "config" / "config.yaml"))
    prompt_ids = tokenize(load_tokenizer(model_dir), prompts)
    folder = Path(tempfile.mkdtemp(prefix="portcheck-vllm-rows-"))
    meta = {"target": "cpu-vllm-bf16", "model_sha": "random", "tokenizer_sha": "tiny", "prompts_sha": "seed"}
    settings = EngineSettings(max_model_len=512, logprobs_topk=topk, extra={"log_file": str(folder / "engine.log")})
    figures: dict = {"vocab": REAL_VOCAB, "prompts": len(prompt_ids), "positions": sum(map(len, prompt_ids)),
                     "logprobs_topk": topk}

    def timed(name, make, write):
        started = time.perf_counter()
        made = make()
        figures[f"{name}_engine_seconds"] = round(time.perf_counter() - started, 3)
        path = folder / f"{name}.safetensors"
        started = time.perf_counter()
        write(path, made)
        figures[f"{name}_write_seconds"] = round(time.perf_counter() - started, 3)
        figures[f"{name}_bytes"] = path.stat().st_size
        return made

    with make_engine(parse_target("cpu-vllm-bf16"), model_dir, settings) as engine:
        figures["engine_start_seconds"] = round(engine.timings["engine_start_s"], 1)
        timed("seed_worker_rows", lambda: engine.score(prompt_ids),
              lambda path, rows: write_dump(path, rows, None, {**meta, **rows_meta(engine)}))
        figures["seed_worker_rows_fallback"] = engine.rows_fallback
        timed("seed_vllm_topk", lambda: engine.logprob_scores(prompt_ids),
              lambda path, rows: write_dump(path, rows, None, {**meta, **rows_meta(engine)}))
        storage = Storage(compact=True)
        workload = prompt_ids[:decode_prompts]
        for name, together in (("decode_worker_compact", False), ("decode_vllm_topk", True)):
            timed(name, lambda: decode_rows(engine, workload, decode_steps, storage, together=together),
                  lambda path, rows: write_decode_dump(path, rows, meta, decode_steps, storage))
        figures.update(decode_prompts=len(workload), decode_steps=decode_steps)
    return figures


def logits_of(model, windows) -> list[np.ndarray]:
    import torch

    with torch.inference_mode():
        return [model(input_ids=torch.tensor([w])).logits[0].float().numpy() for w in windows]


def scale_logits(model, scale: float) -> None:
    """As portcheck.model.tiny calibrates: the final RMSNorm computes x_hat * (1 + w), lm_head is linear."""
    import torch

    norm = model.model.norm.weight
    with torch.no_grad():
        norm.copy_((1.0 + norm) * scale - 1.0)


def measure(ref_logits, tgt_logits, windows, topk: int, sample: int) -> dict:
    from portcheck.compare import metrics as m
    from portcheck.compare.compare import compare_dumps
    from portcheck.dump.compact import Storage
    from portcheck.dump.logits_file import read_dump, write_dump
    from portcheck.engines.outputs import PromptScores

    exact = np.concatenate([m.kld_rows(m.log_softmax(a), m.log_softmax(b)) for a, b in zip(ref_logits, tgt_logits)])
    top1 = float(np.mean(np.concatenate([np.exp(m.log_softmax(a)).max(axis=1) for a in ref_logits])))
    storage = Storage(compact=True, topk=topk, sample=sample)
    folder = Path(tempfile.mkdtemp(prefix="portcheck-compact-"))
    paths = {}
    for side, target, rows in (("ref", "cpu-hf-fp32", ref_logits), ("tgt", "cpu-hf-bf16", tgt_logits)):
        scores = [PromptScores(input_ids=np.asarray(w, np.int64), logits=r) for w, r in zip(windows, rows)]
        paths[side] = folder / f"{side}.safetensors"
        started = time.perf_counter()
        write_dump(paths[side], scores, None, {"target": target, "model_sha": "random", "tokenizer_sha": "random",
                                                "prompts_sha": "windows"}, storage)
        paths[side + "_seconds"] = time.perf_counter() - started
    result = compare_dumps(read_dump(paths["ref"]), read_dump(paths["tgt"]), {}, 0.04)
    positions = int(exact.size)
    mean = float(exact.mean())
    # The keys of compare.compact.estimator_error (what every run measures), so the report reads both alike;
    # bytes_per_position here is the compact file's size per position, header included.
    return {
        "topk": topk, "sample": sample, "vocab": REAL_VOCAB, "positions": positions,
        "bytes_per_position": paths["ref"].stat().st_size / positions, "full_bytes_per_position": 4 * REAL_VOCAB,
        "exact_mean": mean, "estimate_mean": result["kld_mean"], "estimate_rel_error": result["kld_mean"] / mean - 1.0,
        "lower_bound_mean": result["kld_mean_lower_bound"],
        "lower_bound_rel_error": result["kld_mean_lower_bound"] / mean - 1.0,
        "exact_p99": float(np.percentile(exact, 99)), "estimate_p99": result["kld_p99"],
        "mean_top1_probability": top1, "write_seconds_per_position": paths["ref_seconds"] / positions,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=2)
    parser.add_argument("--window-length", type=int, default=256)
    parser.add_argument("--topk", type=int, default=256)
    parser.add_argument("--sample", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--vllm", type=Path, default=None, help="checkpoint folder: measure vLLM's rows instead")
    parser.add_argument("--topk-logprobs", type=int, default=20)
    parser.add_argument("--decode-steps", type=int, default=32)
    args = parser.parse_args()
    if args.vllm:
        started = time.perf_counter()
        model_dir = write_real_shape_checkpoint(args.vllm, args.seed)
        print(f"checkpoint {model_dir} ready in {time.perf_counter() - started:.1f} s", flush=True)
        print(json.dumps(measure_vllm_rows(model_dir, args.topk_logprobs, args.decode_steps), indent=1))
        return
    import torch

    from portcheck.env.versions import stack_versions
    from portcheck.model.tiny import _calibration_scale

    torch.set_num_threads(max(1, torch.get_num_threads()))
    started = time.perf_counter()
    model, parameters = build_models(args.seed)
    rng = np.random.default_rng(args.seed)
    windows = [rng.integers(0, 248044, args.window_length).tolist() for _ in range(args.windows)]
    regimes = {}
    reference = logits_of(model, windows)
    for regime in ("as initialised", f"scaled to mean top-1 {PEAKED_TOP1}"):
        if regime != "as initialised":
            scale_logits(model, _calibration_scale([torch.from_numpy(r) for r in reference], PEAKED_TOP1))
            reference = logits_of(model, windows)
        target = logits_of(copy.deepcopy(model).to(torch.bfloat16), windows)
        regimes[regime] = measure(reference, target, windows, args.topk, args.sample)
        print(regime, json.dumps(regimes[regime], indent=1), flush=True)
    record = {
        "what": "compact-storage KLD against the exact KLD, Qwen3.5-0.8B text shape with random weights, "
                "bf16 vs fp32 on the hf engine (CPU)",
        "command": "make bench-compact", "date": datetime.date.today().isoformat(),
        "vocab": REAL_VOCAB, "parameters": parameters, "windows": args.windows, "window_length": args.window_length,
        "topk": args.topk, "sample": args.sample, "seconds": round(time.perf_counter() - started, 1),
        "versions": {k: v for k, v in stack_versions().items() if k in ("torch", "transformers", "numpy")},
        "regimes": regimes,
    }
    args.out.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
