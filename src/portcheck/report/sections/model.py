"""Section Model and configuration: the checkpoint's facts (from the manifest) and the engine settings each
target's dump was made with."""

from __future__ import annotations

from typing import Any

from portcheck.artifacts import read_artifact
from portcheck.report.format import ABSENT, NOT_RUN, UNKNOWN, decimal, gib, millions, num, pct, show, table
from portcheck.report.load import TargetData
from portcheck.report.sources import cite, every_target
from portcheck.targets import FLOOR_TARGET, parse_target

SHA_PREFIX = 16
SEED_EOS_ID = 248044  # Qwen3.5's eos id, which the seed report's model table gives as vocab_size
MANIFEST_KEYS = ("source", "config", "parameters", "tensor_count", "text_tensors", "vision_tensors", "mtp_tensors",
                 "total_bytes", "files", "dtypes", "model_sha", "tokenizer_sha")


def model_section(manifest: dict | None, manifest_path: str | None, targets: list[TargetData],
                  context_path: str | None = None, mtp_path: str | None = None) -> dict:
    return {"table": model_table(manifest, manifest_path) if manifest is not None else None,
            "settings": settings_table(targets), "context": context_table(context_path, _floor(targets)),
            "mtp": mtp_table(mtp_path)}


def _floor(targets: list[TargetData]) -> TargetData | None:
    """The bf16 floor with its corpus comparison, the unit of the context table's KLD."""
    return next((t for t in targets if t.name == FLOOR_TARGET and t.role == "target" and t.corpus_compare), None)


def context_table(path: str | None, floor: TargetData | None = None) -> dict | None:
    """How much the model needs far context (rule measure_context); None where the corpus is off. The KLD the cut
    causes is given as a multiple of the bf16 floor's corpus KLD where the floor ran."""
    if not path:
        return None
    sources = [cite(path, "loss_full", "loss_cut", "rise", "kld_whole_cut_mean", "top1_changed_rate", "far_repeats")]
    c = read_artifact(path, "context")
    if c.get("status") != "ok":
        rows = [["far-context dependence", NOT_RUN, c.get("reason", UNKNOWN)]]
    else:
        n = c["context_tokens"]
        rows = [["next-token loss, whole window", f"{c['loss_full']:.3f} nats",
                 f"{c['positions']} positions (every {c['stride']}th from {n}) of {c['windows']} corpus windows, "
                 f"{c['reference']}"],
                ["next-token loss, last {} tokens only".format(n), f"{c['loss_cut']:.3f} nats",
                 "the same positions, the context cut to one Gated DeltaNet chunk"],
                ["rise when the far context is cut", f"{c['rise']:+.3f} nats",
                 _dependence_note(c)],
                *_moved_rows(c, floor, sources),
                *_far_repeat_rows(c)]
    return table(["Measure", "Value", "Note"], rows, "; ".join(sources))


def mtp_table(path: str | None) -> dict | None:
    """The MTP head's acceptance as its weights make it (rule measure_mtp): vLLM's speculative rounds replayed along
    the reference's own greedy decode; None where the decode is off."""
    if not path:
        return None
    m = read_artifact(path, "mtp_head")
    source = cite(path, "acceptance_rate", "per_position", "drafts", "draft_tokens", "repeated_token_share")
    if m.get("status") != "measured":
        return table(["Measure", "Value", "Note"], [["MTP head acceptance", NOT_RUN, m.get("reason", UNKNOWN)]],
                     source)
    spec = m["spec_tokens"]
    where = (f"{m['drafts']} speculative rounds of {spec} draft token{'s' if spec > 1 else ''} "
             f"(modes.spec_tokens) replayed along {m['reference']}'s greedy decode of the decode prompts, its own "
             "hidden states feeding the head and its tokens deciding what is accepted")
    rows = [["MTP head acceptance rate", pct(m.get("acceptance_rate")), where],
            ["per draft position", ", ".join(pct(r) for r in m.get("per_position") or []) or UNKNOWN,
             "accepted at that position / rounds"],
            ["mean acceptance length", decimal(m.get("mean_accepted_length")),
             "1 + accepted / rounds (vLLM's definition)"],
            ["decoded tokens repeating the one before", pct(m.get("repeated_token_share")),
             "a decode that loops on one token (whitespace, say) is easy to draft: the higher this, the less the "
             "acceptance says about the head"]]
    return table(["Measure", "Value", "Note"], rows, source)


def _moved_rows(c: dict, floor: TargetData | None, sources: list[str]) -> list[list[str]]:
    """How far the cut moves the distributions: the most any carried-state fault could move them."""
    kld, changed = c.get("kld_whole_cut_mean"), c.get("top1_changed_rate")
    note = "the same positions; the most a fault that loses everything beyond one chunk could move the outputs"
    floor_kld = ((floor.corpus_compare or {}).get("overall") or {}).get("kld_mean") if floor else None
    if kld is not None and floor_kld:
        note += f": {kld / floor_kld:,.0f}x the bf16 floor's corpus KLD mean ({floor.name}, {floor_kld:.3g})"
        sources.append(cite(floor.paths.get("corpus_compare", ""), "overall.kld_mean"))
    return [["KL(whole ‖ cut), mean", UNKNOWN if kld is None else f"{kld:.3g} nats", note],
            ["top-1 changed by the cut", UNKNOWN if changed is None else f"{changed:.1%}", "the same positions"]]


def _far_repeat_rows(c: dict) -> list[list[str]]:
    """The positions where only the far context can help (measure_context's far repeats)."""
    far = c.get("far_repeats")
    if far is None:
        return []
    if far.get("status") == "not run":
        return [["at the far repeats", NOT_RUN, far["reason"]]]
    what = (f"{far['positions']} positions (at most {far['per_window_max']} per window) that continue "
            f"{far['min_match']}+ tokens of a stretch the window holds only beyond the last {c['context_tokens']} "
            "tokens (the next token included)")
    return [["next-token loss at the far repeats, whole / cut", f"{far['loss_full']:.3f} / {far['loss_cut']:.3f} nats",
             what],
            ["rise at the far repeats", f"{far['rise']:+.3f} nats",
             f"top-1 changed by the cut at {far['top1_changed_rate']:.1%} of them"]]


def _dependence_note(c: dict) -> str:
    """What the rise means for the checks that need a carried state."""
    far_rise = (c.get("far_repeats") or {}).get("rise")
    if far_rise is not None and far_rise >= 0.5:
        return ("the model recalls tokens from beyond one chunk (the far repeats below): a fault in a carried state "
                "(GDN state across chunks, attention far back) moves its outputs there")
    if c["rise"] < 0.05:
        return ("the model barely uses context beyond one chunk: a fault in a carried state (GDN state across "
                "chunks, attention far back) hardly moves its outputs, so the checks on them have little to see")
    return "the model uses context beyond one chunk: faults in carried state move its outputs"


def model_table(manifest: dict, manifest_path: str) -> dict:
    c = manifest.get("config") or {}
    params = manifest.get("parameters") or {}
    rows = [
        ["source", _source_text(manifest.get("source")), ""],
        ["architectures", show(c.get("architectures")), f"model_type {show(c.get('model_type'))}"],
        ["parameters (total)", millions(params.get("total")), _parts_note(params)],
        ["tensors", num(manifest.get("tensor_count")),
         f"text {show(manifest.get('text_tensors'))}, vision {show(manifest.get('vision_tensors'))}, "
         f"mtp {show(manifest.get('mtp_tensors'))}"],
        ["checkpoint size", gib(manifest.get("total_bytes")), f"{len(manifest.get('files') or [])} files"],
        ["weight dtypes", ", ".join(sorted(manifest.get("dtypes") or {})) or UNKNOWN, ""],
        ["hidden_size", show(c.get("hidden_size")), ""],
        ["num_hidden_layers", show(c.get("num_hidden_layers")), _layer_note(c)],
        ["num_attention_heads", show(c.get("num_attention_heads")),
         f"{show(c.get('num_key_value_heads'))} KV heads (GQA), head_dim {show(c.get('head_dim'))}"],
        ["linear attention heads (key / value)",
         f"{show(c.get('linear_num_key_heads'))} / {show(c.get('linear_num_value_heads'))}",
         f"head dims {show(c.get('linear_key_head_dim'))} / {show(c.get('linear_value_head_dim'))}"],
        ["intermediate_size", show(c.get("intermediate_size")), ""],
        ["vocab_size", show(c.get("vocab_size")), _vocab_note(c)],
        ["eos_token_id", show(c.get("eos_token_id")), "a token id, not a size"],
        ["max_position_embeddings", show(c.get("max_position_embeddings")), ""],
        ["tie_word_embeddings", show(c.get("tie_word_embeddings")), ""],
        ["mtp_num_hidden_layers", show(c.get("mtp_num_hidden_layers")), "multi-token prediction head"],
        ["mamba_ssm_dtype", show(c.get("mamba_ssm_dtype")), "recurrent state dtype the config asks for"],
        ["vision tower", show(c.get("vision_tower")), "in the checkpoint; the text-only class skips it"],
        ["model_sha", short_sha(manifest.get("model_sha")), "weights + config.json"],
        ["tokenizer_sha", short_sha(manifest.get("tokenizer_sha")), ""],
    ]
    return table(["Parameter", "Value", "Note"], rows, cite(manifest_path, *MANIFEST_KEYS))


def short_sha(sha: Any) -> str:
    return str(sha)[:SHA_PREFIX] if sha else UNKNOWN


def _source_text(source: Any) -> str:
    if isinstance(source, dict):
        return ", ".join(f"{k}={show(v)}" for k, v in source.items() if v is not None) or UNKNOWN
    return show(source)


def _parts_note(params: dict) -> str:
    return ", ".join(f"{part} {millions(params.get(part))}" for part in ("text", "vision", "mtp") if part in params)


def _layer_note(c: dict) -> str:
    counts = c.get("layer_type_counts") or {}
    kinds = " + ".join(f"{n}× {kind}" for kind, n in sorted(counts.items(), key=lambda kv: -kv[1]))
    full = c.get("full_attention_layers")
    return f"{kinds}; full attention at layers {', '.join(map(str, full))}" if full else kinds


def _vocab_note(c: dict) -> str:
    vocab, eos = c.get("vocab_size"), c.get("eos_token_id")
    if vocab is None or eos is None or vocab == eos:
        return "logit width"
    note = f"logit width (padded); differs from eos_token_id {show(eos)}"
    return note + (" (the seed report listed 248044, the eos id, as vocab_size)" if eos == SEED_EOS_ID else "")


def settings_table(targets: list[TargetData]) -> dict:
    """Engine settings each target's dump was made with, side by side."""
    keys: list[str] = []
    for t in targets:
        keys += [k for k in ((t.meta or {}).get("settings") or {}) if k not in keys]
    rows = [["device / engine / dtype"] + [_target_parts(t) for t in targets],
            ["GDN implementation"] + [_gdn_text(t) for t in targets],
            ["run seconds (one engine start)"] + [_meta_value(t, "run_seconds") for t in targets]]
    rows += [[key] + [_setting(t, key) for t in targets] for key in keys]
    source = cite(every_target(targets, "logits"), "settings", "gdn_impl", "run_seconds")
    return table(["Setting"] + [t.name for t in targets], rows, f"{source}; device / engine / dtype: the target name")


def _target_parts(t: TargetData) -> str:
    target = parse_target(t.name)
    return f"{target.device} / {target.engine} / {target.dtype}"


def _gdn_text(t: TargetData) -> str:
    if not t.ran:
        return NOT_RUN
    impl = t.meta.get("gdn_impl")
    return impl.get("kind", show(impl)) if isinstance(impl, dict) else (show(impl) if impl else UNKNOWN)


def _meta_value(t: TargetData, key: str) -> str:
    return show(t.meta.get(key)) if t.ran else NOT_RUN


def _setting(t: TargetData, key: str) -> str:
    if not t.ran:
        return NOT_RUN
    settings = t.meta.get("settings") or {}
    return show(settings[key]) if key in settings else ABSENT
