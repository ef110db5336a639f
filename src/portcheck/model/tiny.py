"""A tiny Qwen3.5 checkpoint with the real architecture, built deterministically from a seed.

The real Qwen3.5-0.8B cannot be downloaded everywhere the workflow runs (CI, laptops), so the tests and the
dry-run path use this stand-in: same classes, same layer pattern (3 Gated DeltaNet : 1 gated full attention),
same rope/mrope layout, tied embeddings, a vision tower and MTP tensors, a byte-level BPE tokenizer with Qwen's
special tokens, all a few MB. Its text weights are shipped: the far-context curriculum (curriculum.py) taught them
to recall a fact stated chunks earlier, so a fault in a carried state moves its outputs; the build loads them and
calibrates the logits so that its next-token distributions are peaked, as on a real model, then loads the MTP head
distilled from that model (shipped as well). Other seeds and sizes train a short run and distill their own head
instead (TRAIN; a model that forgets within a few tokens).

`architecture="qwen3"` builds a dense Qwen3 of the same text sizes and tokenizer instead (`model.source:
tiny-qwen3`): the stand-in for vLLM lines whose CPU backend cannot load Qwen3.5 (vLLM 0.18).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterator

from portcheck.atomic import atomic_path

CORPUS_RESOURCE = "tiny_corpus.txt"
# The Qwen3.5 text model of seed 0 after the far-context curriculum (curriculum.py; minutes on one core): shipped with
# the record of its run (scripts/train_tiny.py writes both; tests/test_tiny.py reruns its first steps).
SHIPPED_TEXT_WEIGHTS = "tiny_qwen3_5_text.safetensors"
SHIPPED_TEXT_RECORD = "tiny_qwen3_5_text.json"
# Its MTP head, distilled from that model once calibrated (_train_mtp; 28 s on one core, the build's longest step):
# shipped with its record too (scripts/train_tiny.py --mtp-only writes both), so every host builds the same head.
SHIPPED_MTP_WEIGHTS = "tiny_qwen3_5_mtp.safetensors"
SHIPPED_MTP_RECORD = "tiny_qwen3_5_mtp.json"

# Size settings. Head dims stay >= 64 because vLLM's CPU attention kernel rejects 32.
TINY_DEFAULTS: dict[str, Any] = {
    "hidden_size": 128,
    "intermediate_size": 384,
    "num_hidden_layers": 8,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 64,
    "linear_num_key_heads": 2,
    "linear_num_value_heads": 2,
    "linear_key_head_dim": 64,
    "linear_value_head_dim": 64,
    "vision_depth": 2,
    "vision_hidden_size": 128,
    "vision_num_heads": 2,
    "vision_intermediate_size": 256,
    "vision_num_position_embeddings": 576,  # must be a square (a grid of learned positions)
}

BPE_VOCAB_SIZE = 1920  # merges the trainer can reach on the shipped corpus; specials follow, as in Qwen
PADDED_VOCAB_SIZE = 2048  # the embedding is padded past the tokenizer, as in the real model (248320)
MAX_TOKEN_CHARS = 9  # caps merges so Chinese phrases do not collapse into one token per prompt

# Qwen's special tokens in Qwen's order, so their offsets from <|endoftext|> match the real ids
# (real: endoftext 248044, vision_start 248053, vision_end 248054, image_pad 248056, video_pad 248057).
QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>",
    "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>", "<|box_end|>",
    "<|quad_start|>", "<|quad_end|>",
    "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]

# Qwen3.5's pre-tokenizer split (as in transformers' Qwen3_5Tokenizer).
PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# The prompts the peakedness target is defined on (the corpus continues each of them).
PROMPTS = [
    "The capital of France is",
    "Machine learning is a branch of",
    "The meaning of life according to philosophy is",
    "Artificial intelligence will",
    "Python is a programming language used for",
    "The solar system consists of",
    "Quantum computing works by",
    "The theory of relativity was proposed by",
    "法国的首都是",
    "机器学习是一种",
    "人工智能将会",
]

# The short run of the dense Qwen3 and of non-default Qwen3.5 builds: ~20 s on 2 cores; enough for greedy
# continuations like "The capital of France is Paris.". One thread: float results depend on the thread count, and
# one thread is the same everywhere and degrades least when other jobs share the machine.
TRAIN = {"steps": 40, "batch": 16, "seq_len": 64, "lr": 4e-3, "warmup": 5, "threads": 1}
# The MTP head: distilled from the finished main model on corpus windows and on the main model's own greedy
# continuations of `greedy` training-text prefixes (self-distillation, as speculative heads are trained: the drafts are
# judged on greedy decodes, which drift from any text; on corpus windows alone the shipped model's head accepted 2-16%
# along the reference's greedy decode, 97.7% with them).
MTP_TRAIN = {"steps": 150, "batch": 8, "seq_len": 128, "lr": 5e-3, "held_back": 4, "greedy": 8}
# Mean top-1 probability over PROMPTS in fp32 after calibration: a model trained for 40 steps on the corpus has
# memorised it and takes 0.65 (a real model's peakedness) cheaply. The shipped far-context model generalises: its
# held-out loss is 5.60 nats unscaled (top-1 0.17), 6.09 at 0.35 and 10.1 at 0.65, so it is scaled to 0.35.
TARGET_TOP1 = 0.65
SHIPPED_TARGET_TOP1 = 0.35
# The dense Qwen3 learns little in the same 40 steps (loss 6.2 vs Qwen3.5's 3.7: full attention picks up local
# context slower than Gated DeltaNet's short convolution); calibrating it to 0.65 takes a logit scale of ~13, which
# multiplies bf16 rounding into KLDs above the thresholds (5.8e-3 measured on vLLM 0.18). 0.3 takes a scale of ~3.
DENSE_TARGET_TOP1 = 0.3


def _shipped(name: str):
    """A file shipped with the package (portcheck/model/data)."""
    return resources.files("portcheck.model.data").joinpath(name)


def corpus_text() -> str:
    return _shipped(CORPUS_RESOURCE).read_text(encoding="utf-8")


def train_tokenizer(text: str, bpe_vocab_size: int = BPE_VOCAB_SIZE):
    """Byte-level BPE shaped like Qwen's (NFC, Qwen split regex, byte-level), specials appended after BPE."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=bpe_vocab_size, min_frequency=2, show_progress=False, max_token_length=MAX_TOKEN_CHARS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[],
    )
    tok.train_from_iterator(text.splitlines(keepends=True), trainer)
    tok.add_special_tokens(QWEN_SPECIAL_TOKENS)
    return tok


def special_token_ids(first_special_id: int = BPE_VOCAB_SIZE) -> dict[str, int]:
    """Config ids of the special tokens when they start at `first_special_id`."""
    index = {name: first_special_id + i for i, name in enumerate(QWEN_SPECIAL_TOKENS)}
    return {
        "eos_token_id": index["<|endoftext|>"],
        "vision_start_token_id": index["<|vision_start|>"],
        "vision_end_token_id": index["<|vision_end|>"],
        "image_token_id": index["<|image_pad|>"],
        "video_token_id": index["<|video_pad|>"],
    }


def tiny_config(vocab_size: int = PADDED_VOCAB_SIZE, **overrides):
    """Qwen3_5Config of the real model's shape at tiny size; overrides: TINY_DEFAULTS keys or special ids."""
    from transformers.models.qwen3_5 import Qwen3_5Config

    unknown = set(overrides) - set(TINY_DEFAULTS) - set(special_token_ids())
    if unknown:
        raise ValueError(f"unknown tiny_config overrides: {sorted(unknown)}")
    size = {**TINY_DEFAULTS, **{k: v for k, v in overrides.items() if k in TINY_DEFAULTS}}
    ids = {**special_token_ids(), **{k: v for k, v in overrides.items() if k not in TINY_DEFAULTS}}
    vision = {k: size.pop(k) for k in list(size) if k.startswith("vision_")}
    rotary_half = int(size["head_dim"] * 0.25) // 2
    text_config = {
        **size,
        "vocab_size": vocab_size,
        "hidden_act": "silu",
        "full_attention_interval": 4,
        "linear_conv_kernel_dim": 4,
        "attn_output_gate": True,
        "attention_bias": False,
        "mamba_ssm_dtype": "float32",
        "mtp_num_hidden_layers": 1,
        "mtp_use_dedicated_embeddings": False,
        "tie_word_embeddings": True,
        "rms_norm_eps": 1e-6,
        "max_position_embeddings": 262144,
        "eos_token_id": ids["eos_token_id"],
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 10000000,
            "partial_rotary_factor": 0.25,
            "mrope_interleaved": True,
            "mrope_section": _mrope_section(rotary_half),
        },
    }
    vision_config = {
        "depth": vision["vision_depth"],
        "hidden_size": vision["vision_hidden_size"],
        "num_heads": vision["vision_num_heads"],
        "intermediate_size": vision["vision_intermediate_size"],
        "num_position_embeddings": vision["vision_num_position_embeddings"],
        "out_hidden_size": size["hidden_size"],
        "deepstack_visual_indexes": [],
        "hidden_act": "gelu_pytorch_tanh",
        "in_channels": 3,
        "patch_size": 16,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    }
    config = Qwen3_5Config(
        text_config=text_config, vision_config=vision_config, tie_word_embeddings=True,
        image_token_id=ids["image_token_id"], video_token_id=ids["video_token_id"],
        vision_start_token_id=ids["vision_start_token_id"], vision_end_token_id=ids["vision_end_token_id"],
    )
    config.architectures = ["Qwen3_5ForConditionalGeneration"]
    return config


def tiny_dense_config(vocab_size: int, eos_token_id: int):
    """Qwen3Config (dense, full attention in every layer) with the tiny Qwen3.5's text sizes: the stand-in for vLLM
    lines whose CPU backend cannot load Qwen3.5 (requirements/vllm-lines.yaml); transformers 4.57 builds it too."""
    from transformers import Qwen3Config

    sizes = {k: TINY_DEFAULTS[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                           "num_attention_heads", "num_key_value_heads", "head_dim")}
    config = Qwen3Config(
        **sizes, vocab_size=vocab_size, hidden_act="silu", max_position_embeddings=262144, rms_norm_eps=1e-6,
        tie_word_embeddings=True, attention_bias=False, eos_token_id=eos_token_id,
    )
    config.architectures = ["Qwen3ForCausalLM"]
    return config


def _mrope_section(rotary_half: int) -> list[int]:
    """Split rotary_dim/2 over (t, h, w) like the real [11, 11, 10] of 32: remainder goes to t, then h."""
    base, rest = divmod(rotary_half, 3)
    return [base + (rest > 0), base + (rest > 1), base]


@contextlib.contextmanager
def _deterministic_torch(seed: int, threads: int) -> Iterator[None]:
    """Seeded RNG, deterministic kernels and a fixed thread count, restored afterwards."""
    import torch

    prev_threads, prev_det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(True)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(prev_det)
            torch.set_num_threads(prev_threads)


def train_text_model(seed: int = 0, steps: int | None = None, on_step=None):
    """The Qwen3.5 text model trained by the far-context curriculum from the build's own initialisation (what the
    shipped weights are; `steps` stops early). Returns the model and its losses."""
    from portcheck.model import curriculum

    text = corpus_text()
    tok = train_tokenizer(text)
    config, model_class = _config_and_class("qwen3.5", _padded_vocab(tok.get_vocab_size()),
                                            tok.token_to_id(QWEN_SPECIAL_TOKENS[0]), {})
    with _deterministic_torch(seed, curriculum.RECIPE["threads"]):
        model = model_class(config)
        losses = curriculum.train(model, tok, text, seed, steps=steps, on_step=on_step)
    return model, losses


def shipped_text_record() -> dict:
    return json.loads(_shipped(SHIPPED_TEXT_RECORD).read_text())


def _load_text_weights(model, path) -> None:
    """Every text-model tensor from `path` (the vision tower keeps its seeded initialisation)."""
    import torch
    from safetensors.torch import load

    shipped = load(path.read_bytes())
    state = model.state_dict()
    text = {name for name in state if not name.startswith("model.visual.") and name != "lm_head.weight"}
    if set(shipped) != text:
        raise ValueError(f"{path.name} does not hold this model's text tensors: missing "
                         f"{sorted(text - set(shipped))[:3]}, extra {sorted(set(shipped) - text)[:3]}")
    with torch.no_grad():
        for name in sorted(text):
            state[name].copy_(shipped[name].to(state[name].dtype))


def _text_training(model, architecture: str, token_ids: list[int], seed: int, overrides: dict) -> dict:
    """The default Qwen3.5 (seed 0, default sizes) takes the shipped far-context weights; any other build trains the
    short run here (seconds; its model forgets within a few tokens). Returns the training's summary."""
    record = shipped_text_record() if architecture == "qwen3.5" and not overrides else {}
    if seed == record.get("seed"):
        _load_text_weights(model, _shipped(SHIPPED_TEXT_WEIGHTS))
        return {"shipped": SHIPPED_TEXT_WEIGHTS, "target_top1": SHIPPED_TARGET_TOP1,
                **{k: record[k] for k in ("recipe", "steps", "far_context")}}
    losses = _train(model, token_ids, seed)
    return {**TRAIN, "shipped": None, "target_top1": TARGET_TOP1 if architecture == "qwen3.5" else DENSE_TARGET_TOP1,
            "first_loss": round(losses[0], 4), "last_loss": round(losses[-1], 4)}


def _train(model, token_ids: list[int], seed: int) -> list[float]:
    """Short AdamW run on random corpus windows; returns the loss per step."""
    import torch

    data = torch.tensor(token_ids, dtype=torch.long)
    windows = torch.Generator().manual_seed(seed)
    params = [p for n, p in model.named_parameters() if not n.startswith("model.visual.")]
    opt = torch.optim.AdamW(params, lr=TRAIN["lr"], weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / TRAIN["warmup"]))
    model.train()
    losses = []
    for _ in range(TRAIN["steps"]):
        starts = torch.randint(0, len(data) - TRAIN["seq_len"], (TRAIN["batch"],), generator=windows)
        batch = torch.stack([data[s : s + TRAIN["seq_len"]] for s in starts.tolist()])
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    model.eval()
    return losses


def _mtp_prefixes(encode: Callable[[str], list[int]], seed: int) -> list[list[int]]:
    """MTP_TRAIN["greedy"] prefixes of 4-23 tokens from the pydoc training text (not the prompts the drafts are
    measured on), seeded."""
    import torch

    from portcheck.model.curriculum import topics_text

    topics = encode(topics_text()[:200_000])
    draw = torch.Generator().manual_seed(seed + 5)
    prefixes = []
    for _ in range(MTP_TRAIN["greedy"]):
        start, length = (int(torch.randint(low, high, (1,), generator=draw)) for low, high in
                         ((0, len(topics) - 40), (4, 24)))
        prefixes.append(topics[start: start + length])
    return prefixes


def _train_mtp(model, config, mtp: dict, token_ids: list[int], prefixes: list[list[int]], seed: int,
               steps: int | None = None) -> tuple[dict, list[float]]:
    """Train the MTP head (in place in `mtp`) to draft what the finished main model predicts one token further:
    row i (hidden state at i, token i+1) against the main model's distribution at i+1, on corpus windows and on the
    main model's greedy continuations of `prefixes`; the main model frozen, in the bf16 values it is saved with. A
    random head accepts nothing, so no acceptance check on it could fail. `steps` stops early. Returns the summary (the
    first and last loss, the draft's top-1 agreement on the held-back corpus windows) and the loss per step."""
    import torch

    from portcheck.model.mtp import build_reference_mtp, text_model

    length = MTP_TRAIN["seq_len"]
    windows = [token_ids[i: i + length] for i in range(0, len(token_ids) - length, length)]
    held_back = windows[: MTP_TRAIN["held_back"]]
    with torch.no_grad():
        windows += [model.generate(torch.tensor([p]), max_new_tokens=length, do_sample=False)[0].tolist()
                    for p in prefixes]
        outputs = [text_model(model)(input_ids=torch.tensor([w])).last_hidden_state for w in windows]
        targets = [torch.softmax(model.lm_head(h), -1)[0] for h in outputs]
    head = build_reference_mtp(config.get_text_config(), {k[len("mtp."):]: v.float() for k, v in mtp.items()},
                               model.get_input_embeddings().weight, model.lm_head.weight)
    trained = [p for name, p in head.named_parameters() if not name.startswith(("embed_tokens", "lm_head"))]
    for p in trained:
        p.requires_grad_(True)
    opt = torch.optim.Adam(trained, lr=MTP_TRAIN["lr"])
    order = torch.Generator().manual_seed(seed + 2)
    first = len(held_back)

    def loss_of(j: int):
        logits = head(outputs[j][:, :-1], torch.tensor([windows[j][1:]]))[0][:-1]
        return -(targets[j][1:-1] * torch.log_softmax(logits, -1)).sum(-1).mean()

    head.train()
    losses = []
    for _ in range(MTP_TRAIN["steps"] if steps is None else steps):
        picks = torch.randint(first, len(windows), (MTP_TRAIN["batch"],), generator=order).tolist()
        loss = sum(loss_of(j) for j in picks) / len(picks)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    head.eval()
    with torch.no_grad():
        agree = [(head(outputs[j][:, :-1], torch.tensor([windows[j][1:]]))[0][:-1].argmax(-1)
                  == targets[j][1:-1].argmax(-1)).float().mean().item() for j in range(first)]
    state = head.state_dict()
    for name in mtp:
        mtp[name] = state[name[len("mtp."):]].detach().to(torch.bfloat16).contiguous()
    return {**MTP_TRAIN, "steps": len(losses), "windows": len(windows) - len(held_back),
            "first_loss": round(losses[0], 4), "last_loss": round(losses[-1], 4),
            "held_back_top1_agreement": round(sum(agree) / len(agree), 4)}, losses


def prompt_logits(model, encode: Callable[[str], list[int]], prompts: list[str] = PROMPTS) -> list:
    """fp32 logits at every position of each prompt (one forward per prompt, no padding)."""
    import torch

    with torch.no_grad():
        return [model(input_ids=torch.tensor([encode(p)])).logits[0].float() for p in prompts]


def mean_top1_prob(logits: list, scale: float = 1.0) -> float:
    """Mean over all positions of the largest next-token probability."""
    import torch

    probs = [torch.softmax(l * scale, dim=-1).max(dim=-1).values for l in logits]
    return torch.cat(probs).mean().item()


def _calibration_scale(logits: list, target: float) -> float:
    """Logit scale giving mean top-1 == target (top-1 grows monotonically with the scale): bisection."""
    lo, hi = 1e-3, 1e3
    for _ in range(60):
        mid = (lo * hi) ** 0.5
        lo, hi = (mid, hi) if mean_top1_prob(logits, mid) < target else (lo, mid)
    return (lo * hi) ** 0.5


def _mtp_tensors(config, seed: int) -> dict:
    """The MTP head of the real checkpoint (names/shapes as vLLM's Qwen3_5MTP loads them), initialised at random
    (_train_mtp then trains it, or the shipped head replaces it).

    transformers does not build it (it ignores ^mtp.*); vLLM's Qwen3_5ForConditionalGeneration skips it too,
    and its speculative-decoding drafter Qwen3_5MTP reads it. Norms are 1-centred ((1 + w)), so zeros.
    """
    import torch

    t = config.text_config
    h, i, d = t.hidden_size, t.intermediate_size, t.head_dim
    gen = torch.Generator().manual_seed(seed + 1)

    def normal(*shape):
        return (torch.randn(*shape, generator=gen) * t.initializer_range).to(torch.bfloat16)

    def zeros(*shape):
        return torch.zeros(*shape, dtype=torch.bfloat16)

    layer = "mtp.layers.0."
    return {
        "mtp.fc.weight": normal(h, 2 * h),
        "mtp.pre_fc_norm_embedding.weight": zeros(h),
        "mtp.pre_fc_norm_hidden.weight": zeros(h),
        "mtp.norm.weight": zeros(h),
        layer + "input_layernorm.weight": zeros(h),
        layer + "post_attention_layernorm.weight": zeros(h),
        # attn_output_gate: q_proj emits queries and the output gate, hence 2x.
        layer + "self_attn.q_proj.weight": normal(2 * t.num_attention_heads * d, h),
        layer + "self_attn.k_proj.weight": normal(t.num_key_value_heads * d, h),
        layer + "self_attn.v_proj.weight": normal(t.num_key_value_heads * d, h),
        layer + "self_attn.o_proj.weight": normal(h, t.num_attention_heads * d),
        layer + "self_attn.q_norm.weight": zeros(d),
        layer + "self_attn.k_norm.weight": zeros(d),
        layer + "mlp.gate_proj.weight": normal(i, h),
        layer + "mlp.up_proj.weight": normal(i, h),
        layer + "mlp.down_proj.weight": normal(h, i),
    }


def _padded_vocab(n_tokens: int) -> int:
    """Embedding rows: the tokenizer size rounded up to a multiple of 256, as the real 248320 is."""
    return -(-n_tokens // 256) * 256


def _scale_final_norm(model, scale: float) -> None:
    """Multiply the logits by `scale`: lm_head is linear after the final RMSNorm, which computes x_hat * (1 + w)
    in Qwen3.5 (1-centred) and x_hat * w in Qwen3."""
    import torch

    language_model = getattr(model.model, "language_model", model.model)
    norm = language_model.norm.weight
    offset = 1.0 if language_model is not model.model else 0.0
    with torch.no_grad():
        norm.copy_((offset + norm) * scale - offset)


def _save_weights(model, path: Path, extra: dict) -> None:
    """model.safetensors as transformers names it (tied lm_head left out), plus `extra`; no timestamps."""
    import torch
    from safetensors.torch import save_file

    state = {k: v.detach().to(torch.bfloat16).contiguous() for k, v in model.state_dict().items()}
    state.pop("lm_head.weight")  # tied to model.language_model.embed_tokens.weight
    state.update(extra)
    with atomic_path(path) as tmp:  # the umask's permissions (safetensors alone writes 0600)
        save_file(dict(sorted(state.items())), str(tmp), metadata={"format": "pt"})


def _save_tokenizer(tok, out: Path, model_max_length: int) -> None:
    tok.save(str(out / "tokenizer.json"))
    tokenizer_config = {
        "tokenizer_class": "Qwen2Tokenizer",
        "add_prefix_space": False,
        "bos_token": None,
        "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "errors": "replace",
        "clean_up_tokenization_spaces": False,
        "split_special_tokens": False,
        "model_max_length": model_max_length,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2, sort_keys=True) + "\n")


def _save_configs(config, out: Path) -> None:
    from transformers import GenerationConfig

    config.dtype = "bfloat16"
    config.save_pretrained(out)
    eos = getattr(config, "text_config", config).eos_token_id
    # Only ids: sampling defaults here would silently change vLLM's default SamplingParams.
    GenerationConfig(eos_token_id=eos, pad_token_id=eos).save_pretrained(out)
    if hasattr(config, "vision_config"):
        (out / "preprocessor_config.json").write_text(json.dumps(_image_processor(config.vision_config), indent=2))


def _image_processor(vision) -> dict:
    """The real checkpoint's image processor settings (Qwen3-VL's), with a pixel range sized to the tiny model: one
    to 64 merged image tokens (the real one allows 64 to 16,384)."""
    group = vision.patch_size * vision.spatial_merge_size  # pixels per merged token, per side
    return {"image_processor_type": "Qwen2VLImageProcessor", "patch_size": vision.patch_size,
            "temporal_patch_size": vision.temporal_patch_size, "merge_size": vision.spatial_merge_size,
            "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "do_convert_rgb": True,
            "size": {"shortest_edge": group * group, "longest_edge": 64 * group * group}}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _param_counts(model, mtp: dict) -> dict[str, int]:
    params = dict(model.named_parameters())  # tied lm_head appears once, as embed_tokens
    count = lambda prefix: sum(p.numel() for n, p in params.items() if n.startswith(prefix))  # noqa: E731
    text = "model.language_model." if hasattr(model.model, "language_model") else "model."
    counts = {
        "text": count(text),
        "embedding": count(text + "embed_tokens."),
        "vision": count("model.visual."),
        "mtp": sum(t.numel() for t in mtp.values()),
    }
    counts["total"] = counts["text"] + counts["vision"] + counts["mtp"]
    return counts


# The tiny models: the embedded default (Qwen3.5's architecture) and a dense Qwen3 of the same text sizes.
ARCHITECTURES = ("qwen3.5", "qwen3")


def build_tiny_model(out_dir: str | Path, seed: int = 0, architecture: str = "qwen3.5", **overrides) -> dict:
    """Build the tiny checkpoint into `out_dir` (a fresh directory; the caller renames it into place).

    Same seed, same corpus, same machine -> byte-identical model.safetensors and tokenizer.json.
    `architecture`: qwen3.5 (the default) or qwen3 (dense). `overrides`: TINY_DEFAULTS keys (qwen3.5).
    Returns a summary; only `build_seconds` varies between runs.
    """
    if architecture not in ARCHITECTURES:
        raise ValueError(f"tiny architecture must be one of {ARCHITECTURES}, got {architecture!r}")
    if set(overrides) - set(TINY_DEFAULTS) or (overrides and architecture != "qwen3.5"):
        raise ValueError(f"build_tiny_model overrides must be TINY_DEFAULTS keys of qwen3.5, got {sorted(overrides)}")
    start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    text = corpus_text()
    tok = train_tokenizer(text)
    with _deterministic_torch(seed, TRAIN["threads"]):
        model, config, calibration = _calibrated_model(tok, text, architecture, seed, overrides)
        mtp = _mtp_tensors(config, seed) if architecture == "qwen3.5" else {}
        mtp_train = _mtp_head(model, config, mtp, tok, text, seed, calibration["train"]["shipped"]) if mtp else None
    _save_weights(model, out / "model.safetensors", mtp)
    _save_configs(config, out)
    t = getattr(config, "text_config", config)
    _save_tokenizer(tok, out, t.max_position_embeddings)
    return {
        "seed": seed,
        "architecture": config.architectures[0],
        "text": {k: getattr(t, k) for k in TINY_DEFAULTS if hasattr(t, k)} | {
            "vocab_size": t.vocab_size,
            "layer_types": list(t.layer_types),
            **({"mrope_section": t.rope_parameters["mrope_section"]} if architecture == "qwen3.5" else {}),
        },
        **({"vision": {
            k: getattr(config.vision_config, k) for k in ("depth", "hidden_size", "num_heads", "out_hidden_size")
        }} if architecture == "qwen3.5" else {}),
        "tokenizer_vocab_size": tok.get_vocab_size(),
        "special_token_ids": {name: tok.token_to_id(name) for name in QWEN_SPECIAL_TOKENS},
        "parameters": _param_counts(model, mtp),
        **calibration,
        **({"mtp_train": mtp_train} if mtp_train else {}),
        "sha256": {name: _sha256(out / name) for name in ("model.safetensors", "tokenizer.json")},
        "build_seconds": round(time.perf_counter() - start, 2),
    }


def _calibrated_model(tok, text: str, architecture: str, seed: int, overrides: dict):
    """The main model: its text weights shipped or trained here on `text` (tok's corpus), its logits scaled to the
    target peakedness. Returns the fp32 model (holding the bf16 values it is saved with), its config and the
    training's and calibration's summary."""
    import torch

    encode = lambda s: tok.encode(s).ids  # noqa: E731
    config, model_class = _config_and_class(architecture, _padded_vocab(tok.get_vocab_size()),
                                            tok.token_to_id(QWEN_SPECIAL_TOKENS[0]), overrides)
    model = model_class(config)
    training = _text_training(model, architecture, encode(text), seed, overrides)
    scale = _calibration_scale(prompt_logits(model, encode), training["target_top1"])
    _scale_final_norm(model, scale)
    model.to(torch.bfloat16)  # the checkpoint is bf16, as the real one; measure what is saved
    top1_bf16 = mean_top1_prob(prompt_logits(model, encode))
    model.to(torch.float32)
    top1_fp32 = mean_top1_prob(prompt_logits(model, encode))
    return model, config, {"train": training, "logit_scale": scale,
                           "mean_top1_prob": {"float32": top1_fp32, "bfloat16": top1_bf16}}


def _mtp_head(model, config, mtp: dict, tok, text: str, seed: int, text_shipped: str | None) -> dict:
    """Fill `mtp` with the head: the shipped one where the main model's text weights are the shipped ones (the
    default build; `make train-tiny` distilled it from that model, 28 s on one core), else distilled here."""
    record = shipped_mtp_record()
    if text_shipped and seed == record["seed"]:
        _load_mtp_weights(mtp, _shipped(SHIPPED_MTP_WEIGHTS))
        return {"shipped": SHIPPED_MTP_WEIGHTS, **record["mtp_train"]}
    return {"shipped": None, **_distill(model, config, mtp, tok, text, seed)[0]}


def _distill(model, config, mtp: dict, tok, text: str, seed: int,
             steps: int | None = None) -> tuple[dict, list[float]]:
    encode = lambda s: tok.encode(s).ids  # noqa: E731
    return _train_mtp(model, config, mtp, encode(text), _mtp_prefixes(encode, seed), seed, steps=steps)


def distill_mtp_head(seed: int = 0, steps: int | None = None) -> tuple[dict, dict, list[float]]:
    """What `make train-tiny` ships as the MTP head: the default build's main model (the shipped text weights,
    calibrated) and its head distilled from it (`steps` stops early). Returns the head's bf16 tensors, the training's
    summary and its loss per step."""
    text = corpus_text()
    tok = train_tokenizer(text)
    with _deterministic_torch(seed, TRAIN["threads"]):
        model, config, calibration = _calibrated_model(tok, text, "qwen3.5", seed, {})
        if not calibration["train"]["shipped"]:
            raise ValueError(f"seed {seed} is not the shipped text model's; the shipped MTP head is distilled from it")
        mtp = _mtp_tensors(config, seed)
        summary, losses = _distill(model, config, mtp, tok, text, seed, steps)
    return mtp, summary, losses


def shipped_mtp_record() -> dict:
    return json.loads(_shipped(SHIPPED_MTP_RECORD).read_text())


def _load_mtp_weights(mtp: dict, path) -> None:
    """The shipped head's tensors into `mtp` (the build's own names, shapes and bf16)."""
    from safetensors.torch import load

    shipped = load(path.read_bytes())
    wrong = sorted(name for name in set(mtp) | set(shipped)
                   if name not in shipped or name not in mtp or shipped[name].shape != mtp[name].shape
                   or shipped[name].dtype != mtp[name].dtype)
    if wrong:
        raise ValueError(f"{path.name} does not hold this model's MTP head: {wrong[:3]} missing, extra or of "
                         "another shape (make train-tiny)")
    mtp.update(shipped)


def _config_and_class(architecture: str, vocab_size: int, first_special: int, overrides: dict):
    if architecture == "qwen3":
        from transformers import Qwen3ForCausalLM

        return tiny_dense_config(vocab_size, special_token_ids(first_special)["eos_token_id"]), Qwen3ForCausalLM
    from transformers.models.qwen3_5 import Qwen3_5ForConditionalGeneration

    config = tiny_config(vocab_size, **special_token_ids(first_special), **overrides)
    return config, Qwen3_5ForConditionalGeneration
