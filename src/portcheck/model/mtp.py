"""Qwen3.5's MTP head run in PyTorch from the checkpoint's `mtp.*` weights: the drafts the weights make when fed the
reference engine's hidden states along a sequence, and vLLM's speculative rounds replayed on them (the reference
acceptance an mtp run is held to).

The computation is vLLM's Qwen3_5MultiTokenPredictor (the drafter vLLM builds for `speculative_config.method mtp`),
on transformers' own Qwen3.5 layers: row i takes the main model's last hidden state at position i (after the final
norm, as vLLM's eagle-style proposer passes it) and the embedding of token i+1, each through its own RMSNorm,
concatenates [embedding, hidden], projects with `fc`, runs one full-attention decoder layer at position i (causal
over the rows before it), and the final norm and the shared lm_head give the draft for token i+2.
transformers itself ignores `mtp.*` (it builds no MTP module)."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np

from portcheck.errors import PortcheckError

PREFIX = "mtp."
HEAD_TENSORS = ("fc.weight", "pre_fc_norm_embedding.weight", "pre_fc_norm_hidden.weight", "norm.weight")


def mtp_weights(model_dir: str | Path, required: bool = True) -> dict:
    """The checkpoint's mtp.* tensors (fp32), by name without the prefix; refused where there are none (empty where
    not `required`)."""
    from safetensors import safe_open

    found = {}
    for path in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():
                if name.startswith(PREFIX):
                    found[name[len(PREFIX):]] = f.get_tensor(name).float()
    if not found and required:
        raise PortcheckError(f"the checkpoint in {model_dir} has no mtp.* weights: no reference MTP acceptance; "
                             "remove the +mtp run or use a checkpoint with its MTP head")
    return found


def unsupported_head(weights: dict) -> str | None:
    """Why the reference cannot replay this MTP head, or None. vLLM drafts step j with layer j mod n: a one-layer
    replay of a deeper head would be wrong from the second draft on."""
    deeper = sorted({k.split(".")[1] for k in weights if k.startswith("layers.") and not k.startswith("layers.0.")})
    if deeper:
        return (f"the checkpoint's MTP head has layers {', '.join(['0', *deeper])}; the reference MTP replays "
                "Qwen3.5's single MTP layer only")
    return None


def build_reference_mtp(text_config, weights: dict, embedding, output):
    """The MTP head as an fp32 torch module; embedding and output: the main model's token embedding and lm_head
    weights (shared with the head, as vLLM shares them). One MTP layer, as Qwen3.5 has."""
    if problem := unsupported_head(weights):
        raise PortcheckError(f"{problem}: remove the +mtp run or give modes.mtp_acceptance.golden from a trusted run")
    import torch
    from torch import nn
    from transformers.models.qwen3_5 import modeling_qwen3_5 as q

    config = copy.deepcopy(text_config)
    config.layer_types = ["full_attention"]
    config._attn_implementation = "eager"
    h = config.hidden_size

    class ReferenceMTP(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(2 * h, h, bias=False)
            self.pre_fc_norm_embedding = q.Qwen3_5RMSNorm(h, eps=config.rms_norm_eps)
            self.pre_fc_norm_hidden = q.Qwen3_5RMSNorm(h, eps=config.rms_norm_eps)
            self.norm = q.Qwen3_5RMSNorm(h, eps=config.rms_norm_eps)
            self.layers = nn.ModuleList([q.Qwen3_5DecoderLayer(config, 0)])
            self.rotary_emb = q.Qwen3_5TextRotaryEmbedding(config)
            self.embed_tokens = nn.Embedding.from_pretrained(embedding.detach().float().cpu(), freeze=True)
            self.lm_head = nn.Linear(h, output.shape[0], bias=False)
            self.lm_head.weight = nn.Parameter(output.detach().float().cpu(), requires_grad=False)

        def rows(self, hidden: torch.Tensor, next_ids: torch.Tensor) -> torch.Tensor:
            """The decoder layer's inputs: fc over [normed embedding of token i+1, normed hidden state at i].
            hidden (1, T, h); next_ids (1, T)."""
            embedded = self.pre_fc_norm_embedding(self.embed_tokens(next_ids))
            return self.fc(torch.cat([embedded, self.pre_fc_norm_hidden(hidden)], dim=-1))

        def states(self, x: torch.Tensor) -> torch.Tensor:
            """The layer over rows x (1, T, h) at positions 0..T-1, causal, then the final norm: the hidden states
            the drafts come from (and that vLLM's proposer feeds the next draft step)."""
            length = x.shape[1]
            positions = torch.arange(length).view(1, 1, -1).expand(3, 1, -1)  # text: the three mrope axes agree
            mask = torch.full((length, length), float("-inf")).triu(1).view(1, 1, length, length)
            return self.norm(self.layers[0](x, position_embeddings=self.rotary_emb(x, positions), attention_mask=mask))

        def drafts(self, states: torch.Tensor, chunk: int = 64) -> torch.Tensor:
            """The greedy draft of each row, the lm_head applied a chunk of rows at a time (a real vocabulary's
            logits for every row at once would take hundreds of MB)."""
            return torch.cat([self.lm_head(states[:, i: i + chunk]).argmax(-1)
                              for i in range(0, states.shape[1], chunk)], dim=1)

        def forward(self, hidden: torch.Tensor, next_ids: torch.Tensor) -> torch.Tensor:
            """Draft logits (1, T, V) for tokens i+2, every row teacher-forced."""
            return self.lm_head(self.states(self.rows(hidden, next_ids)))

    module = ReferenceMTP()
    layer = {k[len("layers.0."):]: v for k, v in weights.items() if k.startswith("layers.0.")}
    own = {k: v for k, v in weights.items() if not k.startswith("layers.")}
    missing = sorted({f"layers.0.{k}" for k in set(module.layers[0].state_dict()) - set(layer)}
                     | (set(HEAD_TENSORS) - set(own)))
    if missing:
        raise PortcheckError(f"the checkpoint's MTP head lacks mtp.{', mtp.'.join(missing)}: not Qwen3.5's MTP "
                             "head; remove the +mtp run or fix the checkpoint")
    module.layers[0].load_state_dict(layer)
    module.load_state_dict({k: own[k] for k in HEAD_TENSORS}, strict=False)
    return module.eval()


def text_model(model):
    """The decoder stack of transformers' Qwen3.5 (the causal LM's, or the conditional-generation class's)."""
    return model.model.language_model if hasattr(model.model, "language_model") else model.model


def _main_hidden(model, sequence: list[int]):
    """The main model's last hidden states along `sequence` (fp32, CPU; the model on any device) and its ids."""
    import torch

    device = next(model.parameters()).device
    ids = torch.tensor([sequence], dtype=torch.long)
    return text_model(model)(input_ids=ids.to(device)).last_hidden_state.float().cpu(), ids


def simulate_rounds(model, mtp, sequence: list[int], prompt_length: int, spec_tokens: int) -> dict:
    """vLLM's speculative rounds replayed along `sequence` (prompt + the target's greedy tokens), as its proposer
    makes them: a round at the last verified row t drafts token t+2 from the teacher-forced row t, then each further
    draft from the previous draft token and the head's own output hidden state at the next position (attending to
    the rows before and the round's earlier drafts); the target accepts the leading drafts equal to its tokens, and
    the next round starts after them and the bonus token. Returns vLLM's counters for this sequence: num_drafts,
    num_draft_tokens, num_accepted_tokens, num_accepted_tokens_per_pos."""
    import torch

    tokens = list(map(int, sequence))
    per_pos = [0] * spec_tokens
    drafts = 0
    with torch.inference_mode():
        hidden, ids = _main_hidden(model, tokens)
        rows = mtp.rows(hidden[:, :-1], ids[:, 1:])  # row i: (hidden at i, token i+1)
        out = mtp.states(rows)
        first = mtp.drafts(out)[0]
        row = prompt_length - 1  # the prefill's last row drafts the token after the first decoded one
        while row + 2 < len(tokens):
            draft, state, chain = int(first[row]), out[:, row: row + 1], []
            accepted = 0
            for step in range(spec_tokens):
                if step:
                    chain.append(mtp.rows(state, torch.tensor([[draft]])))
                    state = mtp.states(torch.cat([rows[:, : row + 1], *chain], dim=1))[:, -1:]
                    draft = int(mtp.drafts(state)[0, 0])
                if accepted == step and row + 2 + step < len(tokens) and draft == tokens[row + 2 + step]:
                    accepted += 1
                    per_pos[step] += 1
            drafts += 1
            row += accepted + 1
    return {"num_drafts": drafts, "num_draft_tokens": drafts * spec_tokens, "num_accepted_tokens": sum(per_pos),
            "num_accepted_tokens_per_pos": per_pos}
