"""The Hugging Face transformers engine: eager PyTorch on cpu, cuda or npu, full logits."""

from __future__ import annotations

import inspect
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from portcheck.engines import devices
from portcheck.model.checkpoint import checkpoint_facts
from portcheck.engines.base import Engine
from portcheck.faults import catalog as faults
from portcheck.faults import hf_hooks
from portcheck.engines.layer_hooks import LayerCapture, check_layer_indices, find_decoder_layers
from portcheck.engines.outputs import (DecodeScores, Generation, LayerStates, PromptScores, TimedGeneration,
                                       VisionScores, decode_row_ids, item)
from portcheck.errors import PortcheckError

# Functions transformers swaps for optimised kernels (flash-linear-attention, causal-conv1d) when installed.
GDN_FUNCTIONS = (
    "torch_chunk_gated_delta_rule",
    "torch_recurrent_gated_delta_rule",
    "causal_conv1d_fn",
    "causal_conv1d_update",
)


def transformers_config(model_dir):
    """The checkpoint's config as transformers' own config class reads it, or None (a model type transformers does
    not ship: AutoConfig decides, with trust_remote_code). Not AutoConfig: vLLM (0.23) registers its own config
    classes with AutoConfig once it has read a checkpoint in a process, and transformers' model classes cannot be
    built from vLLM's Qwen3_5Config."""
    import json

    import transformers
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    model_type = json.loads((Path(model_dir) / "config.json").read_text()).get("model_type")
    name = CONFIG_MAPPING_NAMES.get(model_type)
    return getattr(transformers, name).from_pretrained(str(model_dir)) if name else None


LAST_LOGITS_TOKENS = 1024  # tokens per batched forward in last_logits (activations of ~15 MB a layer at 0.8B)
DECODE_ROWS_BYTES = 1 << 30  # step rows a batched decode holds: 8 prompts x 128 steps at 248,320 ids


class HFEngine(Engine):
    def __init__(self, target, model_dir, settings):
        super().__init__(target, model_dir, settings)
        import torch
        from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

        self.torch = torch
        self.device = devices.torch_device(target.device)
        devices.set_cpu_threads(settings.threads)
        start = time.perf_counter()
        # The text-only class unless language_model_only is off: AutoModelForCausalLM on a
        # Qwen3_5ForConditionalGeneration checkpoint skips the vision tower; the vision check loads the whole model.
        model_class = AutoModelForCausalLM if settings.language_model_only else AutoModelForImageTextToText
        config = transformers_config(self.model_dir)
        self.model, self.loading_info = model_class.from_pretrained(
            self.model_dir,
            **({"config": config} if config is not None else {}),
            dtype=getattr(torch, target.torch_dtype_name),
            trust_remote_code=settings.trust_remote_code,
            output_loading_info=True,
        )
        self.model.to(self.device).eval()
        self.injected_fault = hf_hooks.install(self.model, target.name)  # None unless a drill names this target
        devices.synchronize(target.device)
        self.timings["weight_load_s"] = time.perf_counter() - start
        self.timings["engine_start_s"] = self.timings["weight_load_s"]

    def _forward_logits(self, ids: list[int]) -> np.ndarray:
        torch = self.torch
        with torch.inference_mode():
            input_ids = torch.tensor([ids], dtype=torch.long, device=self.device)
            logits = self.model(input_ids=input_ids).logits[0]
        return logits.float().cpu().numpy()

    def score(self, prompts: list[list[int]]) -> list[PromptScores]:
        return [
            PromptScores(input_ids=np.asarray(ids, dtype=np.int64), logits=self._forward_logits(ids)) for ids in prompts
        ]

    def last_logits(self, prompts: list[list[int]]) -> np.ndarray:
        """Prompts of one length in batches of up to LAST_LOGITS_TOKENS tokens (no padding, so no mask), the
        vocabulary projection on the last position only (logits_to_keep=1): measure_context scored each of its
        64-token cuts alone with every position's logits, most of its time at the real vocabulary."""
        torch = self.torch
        lengths = {len(ids) for ids in prompts}
        if len(lengths) != 1:  # none, or of several lengths: one by one
            return super().last_logits(prompts)
        per_batch = max(1, LAST_LOGITS_TOKENS // max(1, lengths.pop()))
        rows = []
        with torch.inference_mode():
            for start in range(0, len(prompts), per_batch):
                input_ids = torch.tensor(prompts[start:start + per_batch], dtype=torch.long, device=self.device)
                rows.append(self.model(input_ids=input_ids, logits_to_keep=1).logits[:, -1].float().cpu().numpy())
        return np.concatenate(rows)

    def generate(self, prompts, max_new_tokens, temperature=0.0, top_p=1.0, seed=None) -> list[Generation]:
        """One left-padded batch, as a serving engine would batch them; greedy when temperature is 0."""
        sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0} if temperature > 0 else {"do_sample": False}
        new_tokens, step_logits = self._generate_steps(prompts, max_new_tokens, sampling, seed)
        logprobs = self.torch.stack([self.torch.log_softmax(step, dim=-1) for step in step_logits], dim=1)
        chosen = logprobs.gather(-1, new_tokens.unsqueeze(-1)).squeeze(-1)
        return [Generation(t.tolist(), c.tolist()) for t, c in zip(new_tokens, chosen)]

    def decode(self, prompts, max_new_tokens, together=False, compact=None, alone=False,
               mixed_batch=False) -> list[DecodeScores]:
        """Greedy, with the raw logits of every step: the recurrent GDN update and the KV-cached attention, not the
        chunked prefill. The prompts go left-padded in batches (generate's padding: masked in attention, zeroed
        before each GDN layer) of up to DECODE_ROWS_BYTES of step rows, not one by one: at the real shape 2.6x
        faster, the same tokens and the rows within 2e-5 of each prompt alone in fp32 (tests/test_precision_depth.py
        checks it on the embedded model)."""
        per_batch = 1 if alone else max(1, DECODE_ROWS_BYTES // (4 * max(1, max_new_tokens) * self._vocab_size()))
        results, self.decode_batches = [], []
        for start in range(0, len(prompts), per_batch):
            batch = prompts[start:start + per_batch]
            self.decode_batches.append(len(batch))
            new_tokens, step_logits = self._generate_steps(batch, max_new_tokens, {"do_sample": False}, None)
            rows = self.torch.stack(step_logits, dim=1).numpy()  # [batch, step, vocabulary]
            step_logits.clear()
            for ids, tokens, logits in zip(batch, new_tokens.tolist(), rows):
                results.append(DecodeScores(list(ids), tokens, PromptScores(
                    input_ids=np.asarray(decode_row_ids(ids, tokens), dtype=np.int64), logits=logits)))
        return results

    def _vocab_size(self) -> int:
        return int(self.model.get_output_embeddings().weight.shape[0])

    def layer_states(self, prompts, indices=None) -> LayerStates:
        """Forward hooks on the decoder layers and the final norm of the model transformers built; each GDN
        layer's recurrent state read from the cache the forward pass filled."""
        config = getattr(self.model.config, "text_config", self.model.config)
        found = find_decoder_layers(self.model, getattr(config, "num_hidden_layers", None))
        if found is None:
            return LayerStates(None, status="not determined",
                               reason=f"no decoder layer list and final norm found in {type(self.model).__name__}")
        layers, norm = found
        chosen = check_layer_indices(indices, len(layers), type(self.model).__name__)
        gdn = [i for i in chosen if hasattr(layers[i], "linear_attn")]
        capture = LayerCapture(layers, norm, chosen, residual_pair=False)
        hidden, states, dtypes = [], [], set()
        try:
            with self.torch.inference_mode():
                for ids in prompts:
                    out = self.model(input_ids=self.torch.tensor([ids], device=self.device), use_cache=True)
                    hidden.append(capture.take())
                    found_states = [recurrent_state(out.past_key_values, i) for i in gdn]
                    if gdn and all(s is not None for s in found_states):
                        dtypes |= {str(s.dtype).replace("torch.", "") for s in found_states}
                        states.append(np.stack([s[0].float().cpu().numpy() for s in found_states]))
        finally:
            capture.remove()
        reason = "" if len(states) == len(prompts) else (
            "no Gated DeltaNet layer among those captured" if not gdn else "no recurrent state found in the cache")
        return LayerStates(hidden, indices=chosen, gdn_states=None if reason else states, gdn_layers=gdn,
                           gdn_state_dtype=", ".join(sorted(dtypes)) or None, gdn_reason=reason)

    def _generate_steps(self, prompts, max_new_tokens, sampling: dict, seed):
        """(new tokens [B, n], per-step raw logits: n tensors [B, V] float32 on cpu) of one left-padded batch."""
        torch = self.torch
        pad = self.model.generation_config.pad_token_id
        if pad is None:
            pad = self.model.generation_config.eos_token_id
        pad = pad[0] if isinstance(pad, list) else (pad or 0)
        width = max(len(p) for p in prompts)
        input_ids = torch.tensor([[pad] * (width - len(p)) + list(p) for p in prompts], device=self.device)
        attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.device)
        if seed is not None:
            torch.manual_seed(seed)
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                max_new_tokens=max_new_tokens,
                min_new_tokens=max_new_tokens,  # fixed lengths keep runs comparable
                pad_token_id=pad,
                output_logits=True,
                return_dict_in_generate=True,
                **sampling,
            )
        return out.sequences[:, width:].cpu(), [step.float().cpu() for step in out.logits]

    def adaptation(self) -> dict[str, Any]:
        facts = checkpoint_facts(self.model_dir)
        info = self.loading_info
        missing = sorted(info.get("missing_keys", []))
        mismatched = [str(m) for m in info.get("mismatched_keys", [])]
        text_config = getattr(self.model.config, "text_config", self.model.config)
        built = _layer_kinds(self.model)
        expected = list(getattr(text_config, "layer_types", []) or [])
        return {
            "engine_class": item(type(self.model).__name__, "ok", "class transformers instantiated"),
            "weights_load": item(
                {"missing": len(missing), "mismatched": len(mismatched)},
                "failed" if missing or mismatched else "ok",
                "missing: " + ", ".join(missing[:5]) if missing else "every text weight found in the checkpoint",
            ),
            "layer_pattern": item(
                _count(built),
                "ok" if built == expected else "failed",
                "counted on the built model; matches config layer_types" if built == expected
                else f"built {built} but config says {expected}",
            ),
            "full_attention_layers": item([i for i, k in enumerate(built) if k == "full_attention"], "ok", "indices"),
            "gdn_implementation": _gdn_item(self.model),
            "mtp_weights_present": item(facts["mtp_tensors"] > 0, "ok", f"{facts['mtp_tensors']} mtp.* tensors in the checkpoint"),
            "mtp_loaded": item(False, "ok", "transformers has no MTP module; MTP weights are ignored by this engine"),
            "vision_weights_present": item(facts["vision_tensors"] > 0, "ok", f"{facts['vision_tensors']} vision tensors in the checkpoint"),
            "vision_loaded": _vision_item(self.model),
            "ssm_state_dtype": self._state_dtype_item(),
            "weight_load_s": item(round(self.timings["weight_load_s"], 3), "ok", "from_pretrained + move to device"),
            "engine_start_s": item(round(self.timings["engine_start_s"], 3), "ok", "same as weight load for hf"),
            "kv_cache_tokens": item(None, "not determined", "hf allocates its cache per request; no fixed capacity"),
            **faults.adaptation_item(self.injected_fault is not None),
        }

    def _state_dtype_item(self):
        """Run one short cached forward and read the dtype of the recurrent state the cache holds."""
        torch = self.torch
        try:
            with torch.inference_mode():
                out = self.model(input_ids=torch.tensor([[1, 2, 3]], device=self.device), use_cache=True)
            cache = out.past_key_values
            for index in range(len(_layer_kinds(self.model))):
                state = recurrent_state(cache, index)
                if state is not None:
                    return item(str(state.dtype).replace("torch.", ""), "ok", "read from the cache after a forward")
        except Exception as exc:  # noqa: BLE001 - an adaptation fact, not a failure of the run
            return item(None, "not determined", f"could not read the cache: {exc}")
        return item(None, "not determined", "no recurrent state found in the cache")

    # -- the vision tower -------------------------------------------------------------------------------------

    def score_images(self, inputs) -> list[VisionScores]:
        """Each image prompt through the whole model (settings.language_model_only off): the logits of the text
        rows after the last image, every vision block's output and the merger's, the multimodal rotary position ids
        the model computed, and the seconds the vision tower took; then the prompt again without the capture, timed
        to its first token (the pixels to the first token's id, device synchronised)."""
        torch = self.torch
        visual = _visual(self.model)
        if visual is None:
            raise PortcheckError(f"{type(self.model).__name__} has no vision tower (model.visual): the vision check needs "
                                 "the conditional-generation class; set vision.enabled: false for this model")
        results = []
        for vision_input in inputs:
            capture = _VisionCapture(self.model, visual, self.target.device)
            with capture, torch.inference_mode():
                logits = self._image_logits(vision_input)
            rows = slice(vision_input.text_start, None)
            results.append(VisionScores(
                PromptScores(np.asarray(vision_input.input_ids[rows], dtype=np.int64), logits[rows].float().cpu().numpy()),
                capture.blocks, capture.merger, capture.position_ids, capture.seconds,
                first_token_seconds=self._first_token_seconds(vision_input)))
        return results

    def _image_logits(self, vision_input):
        torch = self.torch
        ids = torch.tensor([vision_input.input_ids], dtype=torch.long, device=self.device)
        return self.model(
            input_ids=ids, mm_token_type_ids=(ids == self.model.config.image_token_id).long(),
            pixel_values=torch.from_numpy(vision_input.pixel_values).to(self.device, self.model.dtype),
            image_grid_thw=torch.from_numpy(vision_input.image_grid_thw).to(self.device)).logits[0]

    def _first_token_seconds(self, vision_input) -> float:
        devices.synchronize(self.target.device)
        started = time.perf_counter()
        with self.torch.inference_mode():
            int(self._image_logits(vision_input)[-1].argmax())  # on the host: the device has finished
        return time.perf_counter() - started

    def vision_facts(self) -> dict[str, Any]:
        """What ran of the vision tower: its class, blocks, and the patch embedding's implementation (vllm-ascend
        rewrote the Conv3d as a linear layer)."""
        visual = self.model.model.visual
        return {"tower_class": type(visual).__name__, "blocks": len(visual.blocks),
                "patch_embedding": type(visual.patch_embed.proj).__name__}

    # -- benchmarking -----------------------------------------------------------------------------------------

    def timed_generate(self, prompts, max_new_tokens, temperature=0.0, seed=None):
        """One left-padded batch through model.generate, exactly max_new_tokens each; a streamer timestamps every
        decoding step (transformers hands it each step's tokens after moving them to the host, which waits for
        the device), so token i of every prompt arrives at the time of step i."""
        torch = self.torch
        from transformers.generation.streamers import BaseStreamer

        class StepClock(BaseStreamer):
            def __init__(self, start):
                self.start, self.times, self.prompt_seen = start, [], False

            def put(self, value):
                if not self.prompt_seen:  # the first call carries the prompt
                    self.prompt_seen = True
                    return
                self.times.append(time.perf_counter() - self.start)

            def end(self):
                pass

        sampling = ({"do_sample": True, "temperature": temperature, "top_p": 1.0, "top_k": 0}
                    if temperature > 0 else {"do_sample": False})
        if seed is not None:
            torch.manual_seed(seed)
        devices.synchronize(self.target.device)
        start = time.perf_counter()
        pad = self._pad_id()
        width = max(len(p) for p in prompts)
        input_ids = torch.tensor([[pad] * (width - len(p)) + list(p) for p in prompts], device=self.device)
        attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.device)
        clock = StepClock(start)
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens,
                min_new_tokens=max_new_tokens, pad_token_id=pad, streamer=clock, **sampling,
            )
        devices.synchronize(self.target.device)
        wall = time.perf_counter() - start
        new_tokens = out[:, width:].cpu().tolist()
        return wall, [TimedGeneration(tokens, list(clock.times[: len(tokens)])) for tokens in new_tokens]

    def _pad_id(self) -> int:
        pad = self.model.generation_config.pad_token_id
        if pad is None:
            pad = self.model.generation_config.eos_token_id
        return pad[0] if isinstance(pad, list) else (pad or 0)

    def weight_bytes(self):
        # parameters() yields a tied tensor once, as a decode step reads it once
        params = list(self.model.parameters())
        return {"bytes": int(sum(p.numel() * p.element_size() for p in params)),
                "parameters": int(sum(p.numel() for p in params)),
                "source": "parameters of the loaded model (tied weights counted once)"}

    def peak_memory(self):
        source = ("torch max_memory_allocated" if self.target.device in ("gpu", "npu")
                  else "peak RSS of this process (ru_maxrss)")
        return {"bytes": devices.peak_memory_bytes(self.target.device), "source": source}

    def close(self):
        self.model = None


def _visual(model):
    """The vision tower of a conditional-generation model; None in a text-only class."""
    return getattr(getattr(model, "model", None), "visual", None)


def _vision_item(model):
    if _visual(model) is None:
        return item(False, "ok", "text-only class loaded; vision tower skipped")
    return item(True, "ok", "conditional-generation class loaded with its vision tower")


class _VisionCapture:
    """Forward hooks for one image prompt: every vision block's output, the merger's, the position ids the language
    model received, and the vision tower's time (device synchronised at both ends)."""

    def __init__(self, model, visual, device: str):
        self.model, self.visual, self.device = model, visual, device
        self.blocks, self.merger, self.position_ids, self.seconds, self._hooks = [], None, None, 0.0, []

    def __enter__(self):
        self._hooks = [block.register_forward_hook(self._keep_block) for block in self.visual.blocks]
        self._hooks += [self.visual.merger.register_forward_hook(self._keep_merger),
                        self.visual.register_forward_pre_hook(self._start),
                        self.visual.register_forward_hook(self._stop),
                        self.model.model.language_model.register_forward_pre_hook(self._keep_positions,
                                                                                  with_kwargs=True)]
        return self

    def __exit__(self, *exc):
        for hook in self._hooks:
            hook.remove()

    def _keep_block(self, module, args, output):
        self.blocks.append(_host(output))

    def _keep_merger(self, module, args, output):
        self.merger = _host(output)

    def _start(self, module, args):
        devices.synchronize(self.device)
        self._started = time.perf_counter()

    def _stop(self, module, args, output):
        devices.synchronize(self.device)
        self.seconds += time.perf_counter() - self._started

    def _keep_positions(self, module, args, kwargs):
        positions = kwargs.get("position_ids")
        self.position_ids = None if positions is None else positions.detach().cpu().numpy().astype(np.int64)


def _host(output) -> np.ndarray:
    tensor = output[0] if isinstance(output, (tuple, list)) else output
    return tensor.detach().float().cpu().numpy()


def recurrent_state(cache, index: int):
    """The recurrent state [batch, heads, key dim, value dim] a GDN layer left in transformers' cache (5.x: a
    dict per cache layer; 4.x: a list on the cache), or None."""
    layers = getattr(cache, "layers", None)
    if layers is not None:
        states = getattr(layers[index], "recurrent_states", None)
        if isinstance(states, dict):
            states = states.get(0, next(iter(states.values()), None))
        return states
    states = getattr(cache, "recurrent_states", None)
    return states[index] if states is not None and index < len(states) else None


def _layer_kinds(model) -> list[str]:
    """Which mixer each decoder layer was built with, read from the modules, not the config."""
    layers = model.model.layers
    return ["linear_attention" if hasattr(layer, "linear_attn") else "full_attention" for layer in layers]


def _count(kinds: list[str]) -> dict[str, int]:
    return {kind: kinds.count(kind) for kind in sorted(set(kinds))}


def _gdn_item(model):
    """Which gated-delta-rule / conv1d implementation the modeling code resolved (reference torch or a kernel)."""
    gdn_layers = [layer.linear_attn for layer in model.model.layers if hasattr(layer, "linear_attn")]
    if not gdn_layers:
        return item(None, "not determined", "the model has no linear-attention layers")
    module = sys.modules[type(gdn_layers[0]).__module__]
    resolved = {}
    for name in GDN_FUNCTIONS:
        implementation = _resolved_function(module, gdn_layers[0], name)
        if implementation is None:
            return item(None, "not determined", f"cannot introspect {name} in {module.__name__}")
        resolved[name] = implementation
    reference = all(v.startswith(("transformers.", "torch.")) for v in resolved.values())
    kind = "reference PyTorch fallback" if reference else "optimised kernel"
    functions = "; ".join(f"{name} -> {impl.rsplit('.', 1)[0]}" for name, impl in resolved.items())
    return item(kind, "ok", f"resolved by transformers: {functions}")


# transformers 5.5.x binds the GDN functions on each layer in __init__ (the fla / causal-conv1d function or the torch
# one; causal_conv1d_fn None = the layer's nn.Conv1d runs); 5.19 resolves them at module level through lazy kernels.
LAYER_ATTRIBUTES = {
    "torch_chunk_gated_delta_rule": "chunk_gated_delta_rule",
    "torch_recurrent_gated_delta_rule": "recurrent_gated_delta_rule",
    "causal_conv1d_fn": "causal_conv1d_fn",
    "causal_conv1d_update": "causal_conv1d_update",
}


def _resolved_function(module, layer, name: str) -> str | None:
    """'module.qualname' of what `name` runs in this transformers: the module-level lazy kernel's implementation
    (5.19), else the function bound on the layer (5.5.x); None where neither is there."""
    function = getattr(module, name, None)
    try:
        implementation = inspect.getclosurevars(function).nonlocals.get("implementation") if function else None
    except TypeError:  # a builtin or a callable object
        implementation = None
    if implementation is None and LAYER_ATTRIBUTES[name] in vars(layer):
        implementation = vars(layer)[LAYER_ATTRIBUTES[name]]
        if implementation is None and name == "causal_conv1d_fn" and hasattr(layer, "conv1d"):
            implementation = type(layer.conv1d)
    if implementation is None:
        return None
    return f"{implementation.__module__}.{implementation.__qualname__}"
