"""The tiny Qwen3.5 stand-in: real architecture, loadable like a real checkpoint, peaked, deterministic."""

from __future__ import annotations

import hashlib
import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers.models.qwen3_5")
from safetensors import safe_open  # noqa: E402

from portcheck.model.tiny import build_tiny_model  # noqa: E402

# The project's reference prompts, written out here so the test does not trust the module's own list.
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

MTP_KEYS = {
    "mtp.fc.weight",
    "mtp.norm.weight",
    "mtp.pre_fc_norm_embedding.weight",
    "mtp.pre_fc_norm_hidden.weight",
    "mtp.layers.0.input_layernorm.weight",
    "mtp.layers.0.post_attention_layernorm.weight",
    "mtp.layers.0.self_attn.q_proj.weight",
    "mtp.layers.0.self_attn.k_proj.weight",
    "mtp.layers.0.self_attn.v_proj.weight",
    "mtp.layers.0.self_attn.o_proj.weight",
    "mtp.layers.0.self_attn.q_norm.weight",
    "mtp.layers.0.self_attn.k_norm.weight",
    "mtp.layers.0.mlp.gate_proj.weight",
    "mtp.layers.0.mlp.up_proj.weight",
    "mtp.layers.0.mlp.down_proj.weight",
}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny") / "model"
    return out, build_tiny_model(out, seed=0)


@pytest.fixture(scope="module")
def model_dir(built):
    return built[0]


@pytest.fixture(scope="module")
def config(model_dir):
    return json.loads((model_dir / "config.json").read_text())


@pytest.fixture(scope="module")
def tensors(model_dir):
    with safe_open(str(model_dir / "model.safetensors"), "pt") as f:
        return {name: f.get_tensor(name) for name in f.keys()}


@pytest.fixture(scope="module")
def tokenizer(model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_checkpoint_files(model_dir, config):
    names = {p.name for p in model_dir.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
            "tokenizer_config.json"} <= names
    assert not any(n.endswith((".bin", ".pt", ".pth", ".pkl")) for n in names)
    assert config["architectures"] == ["Qwen3_5ForConditionalGeneration"]
    assert config["model_type"] == "qwen3_5"
    assert config["text_config"]["model_type"] == "qwen3_5_text"


def test_layer_types_three_linear_to_one_full(config):
    types = config["text_config"]["layer_types"]
    assert len(types) >= 8
    assert [i for i, t in enumerate(types) if t == "full_attention"] == [i for i in range(len(types)) if i % 4 == 3]
    assert set(types) == {"linear_attention", "full_attention"}


def test_attention_shapes_as_the_real_model(config, tensors):
    text = config["text_config"]
    assert text["head_dim"] >= 64
    assert text["linear_key_head_dim"] >= 64 and text["linear_value_head_dim"] >= 64
    assert text["num_attention_heads"] > text["num_key_value_heads"]  # GQA
    assert text["attn_output_gate"] is True
    assert text["linear_conv_kernel_dim"] == 4
    assert text["mamba_ssm_dtype"] == "float32"
    assert text["mtp_num_hidden_layers"] == 1
    # The gated query projection emits queries and the output gate.
    full = text["layer_types"].index("full_attention")
    q = tensors[f"model.language_model.layers.{full}.self_attn.q_proj.weight"]
    assert q.shape == (2 * text["num_attention_heads"] * text["head_dim"], text["hidden_size"])


def test_rope_layout_consistent(config):
    text = config["text_config"]
    rope = text["rope_parameters"]
    rotary_dim = int(text["head_dim"] * rope["partial_rotary_factor"])
    assert rope["partial_rotary_factor"] == 0.25
    assert rope["mrope_interleaved"] is True
    assert len(rope["mrope_section"]) == 3
    assert sum(rope["mrope_section"]) == rotary_dim // 2


def test_tied_embeddings(config, tensors):
    assert config["tie_word_embeddings"] is True
    assert config["text_config"]["tie_word_embeddings"] is True
    assert "lm_head.weight" not in tensors
    embed = tensors["model.language_model.embed_tokens.weight"]
    assert embed.shape == (config["text_config"]["vocab_size"], config["text_config"]["hidden_size"])
    assert config["text_config"]["vocab_size"] <= 4096


def test_weights_are_bf16_and_small(model_dir, tensors):
    assert {t.dtype for t in tensors.values()} == {torch.bfloat16}
    assert (model_dir / "model.safetensors").stat().st_size < 20 * 2**20


def test_safetensors_metadata_is_fixed(model_dir):
    with safe_open(str(model_dir / "model.safetensors"), "pt") as f:
        assert f.metadata() == {"format": "pt"}


def test_mtp_tensors_as_the_real_checkpoint(config, tensors):
    text = config["text_config"]
    h, heads, kv, d = text["hidden_size"], text["num_attention_heads"], text["num_key_value_heads"], text["head_dim"]
    assert {k for k in tensors if k.startswith("mtp.")} == MTP_KEYS
    assert tensors["mtp.fc.weight"].shape == (h, 2 * h)
    assert tensors["mtp.layers.0.self_attn.q_proj.weight"].shape == (2 * heads * d, h)
    assert tensors["mtp.layers.0.self_attn.k_proj.weight"].shape == (kv * d, h)
    assert tensors["mtp.layers.0.self_attn.o_proj.weight"].shape == (h, heads * d)
    assert tensors["mtp.layers.0.mlp.down_proj.weight"].shape == (h, text["intermediate_size"])
    assert tensors["mtp.fc.weight"].float().std() > 0


def test_the_mtp_head_is_trained_to_draft_what_the_main_model_predicts(built, model_dir):
    """Distilled from the finished main model: its drafts agree with the main model's next-but-one prediction on
    held-back windows far above chance (1 / 2048), and the reference MTP built from the saved bf16 head agrees too."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    from portcheck.engines.hf import transformers_config
    from portcheck.model.mtp import build_reference_mtp, mtp_weights, text_model

    trained = built[1]["mtp_train"]
    assert trained["last_loss"] < trained["first_loss"] - 1 and trained["held_back_top1_agreement"] > 0.3
    model = AutoModelForCausalLM.from_pretrained(model_dir, config=transformers_config(model_dir),
                                                 dtype=torch.float32).eval()
    mtp = build_reference_mtp(model.config.get_text_config(), mtp_weights(model_dir),
                              model.get_input_embeddings().weight, model.get_output_embeddings().weight)
    ids = torch.tensor([list(range(5, 300, 3))])
    with torch.no_grad():
        hidden = text_model(model)(input_ids=ids).last_hidden_state
        predicted = model.lm_head(hidden)[0].argmax(-1)
        drafts = mtp(hidden[:, :-1], ids[:, 1:])[0].argmax(-1)  # row i drafts token i + 2: the prediction at i + 1
    agreement = float(np.mean((drafts[:-1] == predicted[1:-1]).numpy()))
    assert agreement > 0.2, agreement


def test_vision_tower_present(config, tensors):
    vision = config["vision_config"]
    assert vision["out_hidden_size"] == config["text_config"]["hidden_size"]
    assert vision["hidden_size"] // vision["num_heads"] >= 64
    for block in range(vision["depth"]):
        assert f"model.visual.blocks.{block}.attn.qkv.weight" in tensors
    assert "model.visual.patch_embed.proj.weight" in tensors
    assert tensors["model.visual.merger.linear_fc2.weight"].shape[0] == vision["out_hidden_size"]


def test_special_tokens_match_config(config, tokenizer, model_dir):
    ids = tokenizer.convert_tokens_to_ids
    assert ids("<|image_pad|>") == config["image_token_id"]
    assert ids("<|video_pad|>") == config["video_token_id"]
    assert ids("<|vision_start|>") == config["vision_start_token_id"]
    assert ids("<|vision_end|>") == config["vision_end_token_id"]
    assert tokenizer.eos_token == "<|endoftext|>" == tokenizer.pad_token
    assert tokenizer.eos_token_id == config["text_config"]["eos_token_id"]
    # Qwen's order after <|endoftext|>, as in the real vocab (248044, 248045, 248046).
    assert (ids("<|im_start|>"), ids("<|im_end|>")) == (tokenizer.eos_token_id + 1, tokenizer.eos_token_id + 2)
    generation = json.loads((model_dir / "generation_config.json").read_text())
    assert generation["eos_token_id"] == tokenizer.eos_token_id


@pytest.mark.parametrize("text", [
    "The capital of France is Paris, and Python is a programming language.",
    "法国的首都是巴黎。机器学习是一种人工智能技术。",
    "Mixed 中英文 text with numbers 12345 and symbols: (a+b)*c!",
])
def test_tokenizer_round_trips(tokenizer, text):
    ids = tokenizer(text)["input_ids"]
    assert len(ids) > 1
    assert tokenizer.decode(ids) == text


def test_special_tokens_encode_as_one_token(tokenizer):
    ids = tokenizer("<|im_start|>user\nhi<|im_end|>")["input_ids"]
    assert ids[0] == tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert ids[-1] == tokenizer.convert_tokens_to_ids("<|im_end|>")


def test_causal_lm_loads_and_is_peaked(model_dir, tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    assert type(model).__name__ == "Qwen3_5ForCausalLM"
    with torch.no_grad():
        top1 = [
            torch.softmax(model(**tokenizer(p, return_tensors="pt")).logits[0], dim=-1).max(dim=-1).values
            for p in PROMPTS
        ]
    mean_top1 = torch.cat(top1).mean().item()
    assert 0.3 <= mean_top1 <= 0.95, mean_top1


def test_same_seed_gives_identical_files(model_dir, tmp_path):
    again = tmp_path / "model"
    build_tiny_model(again, seed=0)
    for name in ("model.safetensors", "tokenizer.json", "config.json", "tokenizer_config.json"):
        assert sha256(again / name) == sha256(model_dir / name), name


def test_the_dense_stand_in_is_a_calibrated_qwen3_with_the_same_tokenizer(tmp_path, model_dir):
    """model.source tiny-qwen3: the model of vLLM lines whose CPU backend cannot load Qwen3.5 (vLLM 0.18)."""
    import torch
    from transformers import AutoModelForCausalLM

    summary = build_tiny_model(tmp_path / "dense", seed=0, architecture="qwen3")
    config = json.loads((tmp_path / "dense" / "config.json").read_text())
    assert config["architectures"] == ["Qwen3ForCausalLM"] and config["num_hidden_layers"] == 8
    assert set(summary["text"]["layer_types"]) == {"full_attention"} and summary["parameters"]["mtp"] == 0
    assert summary["train"]["shipped"] is None and summary["train"]["steps"] == 40  # the short run, not shipped
    assert (tmp_path / "dense" / "tokenizer.json").read_bytes() == (model_dir / "tokenizer.json").read_bytes()
    assert abs(summary["mean_top1_prob"]["float32"] - 0.3) < 0.01  # calibrated through the (plain) final norm
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "dense"), dtype=torch.float32)
    assert type(model).__name__ == "Qwen3ForCausalLM"
    with pytest.raises(ValueError, match="tiny architecture must be one of"):
        build_tiny_model(tmp_path / "other", architecture="llama")


def test_the_shipped_text_model_is_what_its_script_trains():
    """The shipped weights come from `make train-tiny` (scripts/train_tiny.py): the curriculum's first steps, rerun
    here from the build's initialisation, reach the state the run recorded, bit for bit on the stack that trained it
    (the same float kernels and torch; other kernels round differently, so there the first losses must agree to
    1e-4), and the file is the one the run wrote."""
    from importlib import resources

    from portcheck.env.capture import float_kernel_flags
    from portcheck.model import curriculum, tiny

    record = tiny.shipped_text_record()
    assert record["recipe"] == json.loads(json.dumps(curriculum.RECIPE)), "the recipe changed: make train-tiny"
    shipped = resources.files("portcheck.model.data").joinpath(tiny.SHIPPED_TEXT_WEIGHTS).read_bytes()
    assert hashlib.sha256(shipped).hexdigest() == record["sha256"]
    model, losses = tiny.train_text_model(record["seed"], steps=record["prefix_steps"])
    assert losses == pytest.approx(record["prefix_losses"], rel=1e-4)
    if record["host"]["float_kernels"] == float_kernel_flags() and record["host"]["torch"] == torch.__version__:
        assert curriculum.text_state_sha256(model) == record["prefix_text_sha256"], "make train-tiny"


def test_the_build_uses_the_shipped_text_model_and_it_recalls_far_back(built, tensors):
    """Every text tensor of the default checkpoint is the shipped one (the final norm carries the calibration scale);
    the run's record measured recall beyond one chunk on held-out rows (the workflow test measures it again on the
    corpus, through measure_context)."""
    from importlib import resources

    from safetensors.torch import load

    from portcheck.model import tiny

    shipped = load(resources.files("portcheck.model.data").joinpath(tiny.SHIPPED_TEXT_WEIGHTS).read_bytes())
    assert built[1]["train"]["shipped"] == tiny.SHIPPED_TEXT_WEIGHTS
    checked = [name for name in shipped if name != "model.language_model.norm.weight"]
    assert len(checked) > 50
    assert all(torch.equal(tensors[name], shipped[name].to(torch.bfloat16)) for name in checked)
    far = built[1]["train"]["far_context"]
    assert far["loss_whole"] < 0.5 < 2.5 < far["loss_cut"], far


def test_the_shipped_mtp_head_is_what_its_script_distills():
    """The shipped head comes from `scripts/train_tiny.py --mtp-only`, distilled from the shipped text model (its
    record names that file's hash): the distillation's first steps, rerun here, give the losses the run recorded, and
    the head's state bit for bit on the stack that distilled it."""
    from importlib import resources

    from portcheck.env.capture import float_kernel_flags
    from portcheck.model import curriculum, tiny

    record = tiny.shipped_mtp_record()
    assert record["text_sha256"] == tiny.shipped_text_record()["sha256"], "the text model changed: make train-tiny"
    assert {k: v for k, v in record["mtp_train"].items() if k in tiny.MTP_TRAIN} == tiny.MTP_TRAIN, \
        "the recipe changed: make train-tiny"
    shipped = resources.files("portcheck.model.data").joinpath(tiny.SHIPPED_MTP_WEIGHTS).read_bytes()
    assert hashlib.sha256(shipped).hexdigest() == record["sha256"]
    mtp, summary, losses = tiny.distill_mtp_head(record["seed"], steps=record["prefix_steps"])
    assert summary["steps"] == record["prefix_steps"] and set(mtp) == MTP_KEYS
    assert losses == pytest.approx(record["prefix_losses"], rel=1e-4)
    if record["host"]["float_kernels"] == float_kernel_flags() and record["host"]["torch"] == torch.__version__:
        assert curriculum.tensors_sha256(mtp) == record["prefix_mtp_sha256"], "make train-tiny"


def test_the_build_uses_the_shipped_mtp_head(built, tensors):
    from importlib import resources

    from safetensors.torch import load

    from portcheck.model import tiny

    shipped = load(resources.files("portcheck.model.data").joinpath(tiny.SHIPPED_MTP_WEIGHTS).read_bytes())
    assert built[1]["mtp_train"]["shipped"] == tiny.SHIPPED_MTP_WEIGHTS and set(shipped) == MTP_KEYS
    assert all(torch.equal(tensors[name], shipped[name]) for name in MTP_KEYS)


def test_a_build_whose_text_model_is_not_shipped_distills_its_own_mtp_head(monkeypatch):
    from portcheck.model import tiny

    calls = []
    monkeypatch.setattr(tiny, "_train_mtp", lambda *args, **kwargs: calls.append(args) or ({"steps": 150}, []))
    monkeypatch.setattr(tiny, "_mtp_prefixes", lambda encode, seed: [])
    text = tiny.corpus_text()
    tok = tiny.train_tokenizer(text)
    assert tiny._mtp_head(None, None, {}, tok, text, 0, None) == {"shipped": None, "steps": 150} and len(calls) == 1
    assert tiny._mtp_head(None, None, {}, tok, text, 1, tiny.SHIPPED_TEXT_WEIGHTS)["shipped"] is None  # another seed
    assert len(calls) == 2


def test_a_shipped_mtp_head_of_another_shape_is_refused(tmp_path):
    from safetensors.torch import save_file

    from portcheck.model import tiny

    mtp = {"mtp.fc.weight": torch.zeros(4, 8, dtype=torch.bfloat16)}
    save_file({"mtp.fc.weight": torch.zeros(4, 4, dtype=torch.bfloat16)}, str(tmp_path / "w.safetensors"))
    with pytest.raises(ValueError, match=r"does not hold this model's MTP head: \['mtp.fc.weight'\].*make train-tiny"):
        tiny._load_mtp_weights(mtp, tmp_path / "w.safetensors")
    save_file({"mtp.other.weight": torch.zeros(4, 8, dtype=torch.bfloat16)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(ValueError, match="mtp.fc.weight', 'mtp.other.weight"):
        tiny._load_mtp_weights(mtp, tmp_path / "x.safetensors")


def test_shipped_text_weights_of_another_shape_are_refused(tmp_path):
    from safetensors.torch import save_file

    from portcheck.model import tiny

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Linear(2, 2)

    save_file({"b.weight": torch.zeros(2, 2)}, str(tmp_path / "w.safetensors"))
    with pytest.raises(ValueError, match="does not hold this model's text tensors"):
        tiny._load_text_weights(Model(), tmp_path / "w.safetensors")
