"""The markdown report. `build_context` reads every artifact of one model into display tables (lists of
strings); `render_report` lays them out with a Jinja template. Nothing time-dependent goes in, so the same
artifacts give a byte-identical report.

Anything absent is said to be absent ("absent", "not run", "unknown") and never counts as a pass."""

from __future__ import annotations

import json
import os
import re
import shlex
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pandas as pd
from jinja2 import Environment, FileSystemLoader, StrictUndefined

from portcheck import __version__
from portcheck.atomic import atomic_path, read_json
from portcheck.errors import PortcheckError
from portcheck.hashing import sha256_file, sha256_json
from portcheck.targets import parse_target

DEFAULT_CONFIGFILE = "config/config.yaml"
REGENERATE = ["snakemake", "--cores", "1"]
SHA_PREFIX = 16
ABSENT, NOT_RUN, UNKNOWN, DASH = "absent", "not run", "unknown", "—"
STATUS_LABEL = {"ok": "✅ ok", "failed": "❌ failed", "not determined": "❔ not determined", NOT_RUN: "⚪ not run"}
VERDICT_LABEL = {"pass": "✅ pass", "fail": "❌ fail", UNKNOWN: "❔ unknown", NOT_RUN: "⚪ not run"}
YES, NO = "✅ yes", "❌ no"
CJK = re.compile(r"[\u2e80-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef]")
SEED_EOS_ID = 248044  # Qwen3.5's eos id, which the seed report's model table gives as vocab_size
PLOT_TITLES = {"kld_per_position": "KLD per position", "kld_distribution": "Distribution of per-position KLD"}
LATER_ISSUE = "no {name}.json was given to the report (the rule that writes it did not run for this target)"


# ---------------------------------------------------------------- formatting


def cell(value: Any, empty: str = "") -> str:
    """Text made safe for one markdown table cell: it cannot end the cell or the row, open a code span,
    emphasis, a link, math or HTML. Line breaks become visible marks, so generated text keeps its shape."""
    if value is None:
        return empty
    text = str(value)
    if text == "":
        return empty
    text = text.replace("\r\n", "\n")
    return "".join(_CELL_ESCAPES.get(char) or _control_mark(char) for char in text).strip()


_CELL_ESCAPES = {
    "\\": "\\\\", "|": "\\|", "`": "\\`", "*": "\\*", "_": "\\_", "~": "\\~", "[": "\\[", "]": "\\]", "$": "\\$",
    "<": "&lt;", ">": "&gt;", "&": "&amp;", "\n": "↵", "\r": "␍", "\t": "⇥",
}


def _control_mark(char: str) -> str:
    # Other control characters and Unicode line/paragraph separators also break lines in some renderers.
    if unicodedata.category(char) in ("Cc", "Zl", "Zp"):
        return f"⟨U+{ord(char):04X}⟩"
    return char


def sci(value: Any) -> str:
    """KLD-sized numbers: 2.50e-05; exact zero stays 0."""
    if not _is_number(value):
        return _missing(value)
    return "0" if value == 0 else f"{value:.2e}"


def pct(value: Any) -> str:
    """A share as a percentage that never rounds a near-miss up to 100% (or a trace down to 0%)."""
    if not _is_number(value):
        return _missing(value)
    text = f"{value * 100:.2f}%"
    if text == "100.00%" and value < 1:
        return ">99.99%"
    if text == "0.00%" and value > 0:
        return "<0.01%"
    return text.replace(".00%", "%")


def num(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if not _is_number(value):
        return _missing(value)
    if isinstance(value, int):
        return f"{value:,}"
    if value != 0 and not 1e-3 <= abs(value) < 1e5:
        return f"{value:.3e}"
    return f"{value:.4g}"


def precise(value: Any) -> str:
    """Cosine similarities: the interesting digits sit after 0.99."""
    return f"{value:.6f}" if _is_number(value) else _missing(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _missing(value: Any) -> str:
    return "unavailable" if value is None else str(value)


def by_name(name: str, value: Any) -> str:
    """Format a metric or threshold by what its name says it measures."""
    if "kld" in name or "rel_err" in name:
        return sci(value)
    if any(word in name for word in ("agreement", "overlap", "ratio", "rate", "rms_delta_p", "rel_delta")):
        return pct(value)
    if "cosine" in name:
        return precise(value)
    return num(value)


def show(value: Any) -> str:
    """Any JSON value (adaptation values, settings) as short text."""
    if value is None:
        return DASH
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    return num(value) if isinstance(value, float) else str(value)  # ints are ids and sizes: no separators


def gib(value: Any) -> str:
    return f"{value / 2**30:.2f} GiB" if _is_number(value) else ABSENT


def millions(value: Any) -> str:
    return f"{value / 1e6:.1f}M ({value:,})" if _is_number(value) else UNKNOWN


def fence(text: str) -> str:
    """A code fence longer than any backtick run in `text`, so the text cannot close it."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def markdown_table(table: dict) -> str:
    """{"header": [...], "rows": [[...]]} as a GitHub markdown table; every cell goes through `cell`."""
    header = table["header"]
    rows = table["rows"] or [[DASH] * len(header)]
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"table row has {len(row)} cells, header has {len(header)}: {row!r}")
    lines = [_row(header), "|" + "---|" * len(header)]
    lines += [_row(row) for row in rows]
    return "\n".join(lines)


def _row(values: list) -> str:
    return "| " + " | ".join(cell(v, empty=" ") for v in values) + " |"


def table(header: list[str], rows: list[list]) -> dict:
    return {"header": header, "rows": rows}


def is_cjk(text: str) -> bool:
    return bool(CJK.search(text or ""))


def clip(text: str, width: int = 80) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


# ---------------------------------------------------------------- loading


@dataclass
class TargetData:
    name: str
    role: str  # "reference" | "target"
    meta: dict | None = None  # the dump's metadata
    env: dict | None = None
    adaptation: dict | None = None
    determinism: dict | None = None
    samples: dict | None = None
    compare: dict | None = None
    extra: dict[str, dict | None] = field(default_factory=dict)  # bench, serve: later stages
    absent: dict[str, str] = field(default_factory=dict)  # artifact kind -> why it is missing

    @property
    def ran(self) -> bool:
        return self.meta is not None

    @property
    def versions(self) -> dict:
        return (self.meta or {}).get("versions") or (self.env or {}).get("versions") or {}


def read_artifact_json(path: str | os.PathLike) -> Any:
    try:
        return read_json(path)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PortcheckError(f"{path} is not valid JSON ({exc}); delete it and rerun the rule that writes it") from exc


def read_dump_meta(path: str | os.PathLike) -> dict:
    """The dump's metadata only (no tensors), decoded as dumps.py writes it: JSON for the keys in json_keys."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="np") as handle:
            header = handle.metadata() or {}
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types for a damaged file
        raise PortcheckError(f"{path} is not a readable safetensors dump ({exc}); rerun the dump rule") from exc
    json_keys = set(json.loads(header.get("json_keys", "[]")))
    return {key: json.loads(value) if key in json_keys else value for key, value in header.items()}


def _load_optional(path, kind: str, reader, data: TargetData):
    if path is None:
        data.absent[kind] = f"{kind} is not configured for this target"
        return None
    if not Path(path).is_file():
        data.absent[kind] = f"{path} is absent"
        return None
    return reader(path)


def load_target(name: str, paths: dict, compare_path, reference: str) -> TargetData:
    data = TargetData(name, "reference" if name == reference else "target")
    data.meta = _load_optional(paths.get("logits"), "logits", read_dump_meta, data)
    for kind in ("env", "adaptation", "determinism", "samples"):
        setattr(data, kind, _load_optional(paths.get(kind), kind, read_artifact_json, data))
    if data.role == "target":
        data.compare = _load_optional(compare_path, "compare", read_artifact_json, data)
    for kind in ("bench", "serve"):
        if kind in paths:
            data.extra[kind] = _load_optional(paths[kind], kind, read_artifact_json, data)
        else:
            data.extra[kind] = None
            data.absent[kind] = LATER_ISSUE.format(name=kind)
    return data


def load_targets(artifacts: dict) -> list[TargetData]:
    reference = artifacts["reference"]
    if reference not in artifacts["targets"]:
        raise PortcheckError(
            f"the reference target {reference!r} has no artifacts (targets: {', '.join(artifacts['targets'])}); "
            "the report compares every target with it, so enable and run it"
        )
    names = sorted(artifacts["targets"], key=lambda n: (n != reference, list(artifacts["targets"]).index(n)))
    compare = artifacts.get("compare") or {}
    return [load_target(n, artifacts["targets"][n], compare.get(n), reference) for n in names]


def prompts_of(targets: list[TargetData]) -> list[str]:
    for data in targets:
        if data.meta and data.meta.get("prompts"):
            return list(data.meta["prompts"])
    return []


# ---------------------------------------------------------------- context


def build_context(artifacts: dict, config: dict) -> dict:
    targets = load_targets(artifacts)
    manifest = read_artifact_json(artifacts["manifest"]) if artifacts.get("manifest") else None
    prompts = prompts_of(targets)
    model = artifacts["model"]
    return {
        "title": (config.get("report") or {}).get("title") or f"{model} port check",
        "model": model,
        "reference": artifacts["reference"],
        "targets": [t.name for t in targets],
        "summary": summary_section(targets),
        "consistency": consistency_table(targets, manifest, prompts),
        "model_table": model_table(manifest),
        "settings": settings_table(targets),
        "environment": environment_section(targets),
        "adaptation": [adaptation_section(t, targets) for t in targets],
        "precision": [precision_section(t, prompts) for t in targets if t.role == "target"],
        "predictions": predictions_section(targets, prompts),
        "determinism": [determinism_section(t) for t in targets],
        "samples": [samples_section(t) for t in targets],
        "theory": theory_section(targets),
        "performance": performance_section(targets, config),
        "plots": plot_list(artifacts.get("plots") or {}),
        "artifacts": artifacts_section(artifacts, targets, manifest, config),
        "history": None,  # the run history (portcheck.history), filled in by the render rule
    }


# ---- summary


def run_label(data: TargetData) -> str:
    if not data.ran:
        return f"⚪ not run ({data.absent.get('logits', 'no dump')})"
    nonfinite = nonfinite_count(data.compare or {}, side="target")
    if nonfinite:
        return f"❌ NaN/inf at {nonfinite} positions"
    return YES


def agreement_status(data: TargetData) -> str:
    if data.role == "reference":
        return "reference"
    if data.compare is None:
        return NOT_RUN
    status = (data.compare.get("verdict") or {}).get("status")
    return status if status in ("pass", "fail") else UNKNOWN


def adaptation_counts(data: TargetData) -> str:
    if data.adaptation is None:
        return NOT_RUN
    statuses = [item.get("status") for item in (data.adaptation.get("items") or {}).values()]
    parts = [f"{statuses.count(s)} {s}" for s in ("ok", "failed", "not determined") if statuses.count(s)]
    return ", ".join(parts) or "no checks"


def determinism_summary(data: TargetData) -> str:
    if data.determinism is None:
        return NOT_RUN
    d = data.determinism
    return f"{pct(d.get('repeat_identical_rate'))} identical, {pct(d.get('batch_invariant_rate'))} batch-invariant"


def summary_section(targets: list[TargetData]) -> dict:
    rows = []
    for t in targets:
        status = agreement_status(t)
        c = t.compare or {}
        rows.append([
            t.name, t.role, run_label(t), VERDICT_LABEL.get(status, status),
            sci(c.get("kld_mean")) if t.compare else DASH,
            pct(c.get("top1_agreement")) if t.compare else DASH,
            num(c.get("delta_ppl")) if t.compare else DASH,
            determinism_summary(t), adaptation_counts(t),
        ])
    header = ["Target", "Role", "Does it run", "Agrees with reference", "KLD mean", "Top-1 agreement", "ΔPPL",
              "Determinism", "Adaptation checks"]
    return {"table": table(header, rows), "overall": overall_verdict(targets)}


def overall_verdict(targets: list[TargetData]) -> dict:
    compared = [t for t in targets if t.role == "target"]
    statuses = {t.name: agreement_status(t) for t in compared}
    failing = [n for n, s in statuses.items() if s == "fail"]
    open_ = [n for n, s in statuses.items() if s != "pass"]
    not_running = [t.name for t in targets if not t.ran]
    if not compared:
        reason = "no target was compared with the reference"
        return {"status": UNKNOWN, "label": VERDICT_LABEL[UNKNOWN], "reason": reason}
    if failing:
        reason = f"{len(failing)} of {len(compared)} compared targets disagree with the reference: {', '.join(failing)}"
        return {"status": "fail", "label": VERDICT_LABEL["fail"], "reason": reason}
    if open_ or not_running:
        reason = f"no verdict for {', '.join(sorted(set(open_ + not_running)))} (not run or unknown)"
        return {"status": UNKNOWN, "label": VERDICT_LABEL[UNKNOWN], "reason": reason}
    return {"status": "pass", "label": VERDICT_LABEL["pass"],
            "reason": f"every compared target ({len(compared)}) agrees with the reference within the thresholds below"}


def consistency_table(targets: list[TargetData], manifest: dict | None, prompts: list[str]) -> dict:
    """Figures that must agree with each other across artifacts; a mismatch means a stale or mixed-up artifact."""
    rows = []
    model_sha = (manifest or {}).get("model_sha")
    for t in targets:
        if t.meta and model_sha:
            same = t.meta.get("model_sha") == model_sha
            rows.append([f"{t.name}: dump made from the manifest's checkpoint (model_sha)", YES if same else NO])
        if t.meta and prompts:
            rows.append([f"{t.name}: dump has the report's {len(prompts)} prompts",
                         YES if list(t.meta.get("prompts") or []) == prompts else NO])
        if t.compare and prompts and t.compare.get("n_prompts") is not None:
            rows.append([f"{t.name}: comparison covers {len(prompts)} prompts",
                         YES if t.compare["n_prompts"] == len(prompts) else f"{NO} ({t.compare['n_prompts']})"])
    return table(["Check", "Holds"], rows)


# ---- model and configuration


def model_table(manifest: dict | None) -> dict | None:
    if manifest is None:
        return None
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
        ["model_sha", _short(manifest.get("model_sha")), "weights + config.json"],
        ["tokenizer_sha", _short(manifest.get("tokenizer_sha")), ""],
    ]
    return table(["Parameter", "Value", "Note"], rows)


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


def _short(sha: Any) -> str:
    return str(sha)[:SHA_PREFIX] if sha else UNKNOWN


def settings_table(targets: list[TargetData]) -> dict:
    """Engine settings each target's dump was made with, side by side."""
    keys: list[str] = []
    for t in targets:
        keys += [k for k in ((t.meta or {}).get("settings") or {}) if k not in keys]
    rows = [["device / engine / dtype"] + [_target_parts(t) for t in targets],
            ["GDN implementation"] + [_gdn_text(t) for t in targets],
            ["run seconds (one engine start)"] + [_meta_value(t, "run_seconds") for t in targets]]
    rows += [[key] + [_setting(t, key) for t in targets] for key in keys]
    return table(["Setting"] + [t.name for t in targets], rows)


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


# ---- environment

ENV_ROWS = (
    ("Python", lambda e: e.get("python")),
    ("OS", lambda e: e.get("os")),
    ("CPU", lambda e: e.get("cpu")),
    ("CPU count", lambda e: e.get("cpu_count")),
    ("RAM", lambda e: gib(e["ram_bytes"]) if e.get("ram_bytes") else None),
    ("GPU", lambda e: "; ".join(" ".join(str(v) for v in g.values()) for g in e["gpu"]) if e.get("gpu") else None),
    ("NPU (npu-smi)", lambda e: "present (table below)" if e.get("npu") else None),
    ("workflow commit", lambda e: e.get("workflow_commit")),
)
VERSION_ROWS = ("torch", "transformers", "vllm", "vllm_ascend", "torch_npu", "cann", "flash_linear_attention",
                "causal_conv1d")


def environment_section(targets: list[TargetData]) -> dict:
    rows = [[label] + [_env_value(t, getter) for t in targets] for label, getter in ENV_ROWS]
    extra = [k for t in targets for k in ((t.env or {}).get("versions") or {}) if k not in VERSION_ROWS]
    for key in [*VERSION_ROWS, *dict.fromkeys(extra)]:
        rows.append([key] + [_env_value(t, lambda e, k=key: (e.get("versions") or {}).get(k)) for t in targets])
    npu = [{"target": t.name, "text": t.env["npu"], "fence": fence(t.env["npu"])}
           for t in targets if t.env and t.env.get("npu")]
    return {"table": table(["Item"] + [t.name for t in targets], rows), "npu": npu}


def _env_value(t: TargetData, getter) -> str:
    if t.env is None:
        return NOT_RUN
    value = getter(t.env)
    return ABSENT if value in (None, "", [], {}) else show(value)


# ---- adaptation


def adaptation_section(data: TargetData, targets: list[TargetData]) -> dict:
    if data.adaptation is None:
        return {"target": data.name, "table": None, "reason": data.absent.get("adaptation", NOT_RUN)}
    items = data.adaptation.get("items") or {}
    names = list(dict.fromkeys(n for t in targets if t.adaptation for n in (t.adaptation.get("items") or {})))
    rows = [_adaptation_row(n, items.get(n), data) for n in names]
    return {"target": data.name, "table": table(["Check", "Status", "Value", "Note"], rows), "reason": ""}


def _adaptation_row(name: str, item: dict | None, data: TargetData) -> list[str]:
    if item is None:
        engine = parse_target(data.name).engine
        return [name, STATUS_LABEL[NOT_RUN], DASH, f"the {engine} engine does not measure this"]
    status = item.get("status", UNKNOWN)
    return [name, STATUS_LABEL.get(status, f"❔ {status}"), show(item.get("value")), item.get("note") or ""]


# ---- precision

METRICS = (
    ("kld_mean", "KLD mean (nats)", "llama.cpp, LLaMA-3-8B: bf16 vs fp16 2.5e-5; q8_0 1.4e-3"),
    ("kld_mean_stderr", "KLD mean, standard error", ""),
    ("kld_median", "KLD median", ""),
    ("kld_p99", "KLD 99th percentile", ""),
    ("kld_p999", "KLD 99.9th percentile", "llama.cpp, LLaMA-3-8B: bf16 vs fp16 8.0e-4"),
    ("kld_max", "KLD max", ""),
    ("top1_agreement", "top-1 agreement (same top token)", "llama.cpp 'same top p': bf16 vs fp16 99.74%, q8_0 97.7%"),
    ("top1_ties", "top-1 disagreements that are ties", "reference top-2 within the tie tolerance"),
    ("top1_agreement_with_ties", "top-1 agreement counting ties as agreement", ""),
    ("top5_overlap", "top-5 overlap", ""),
    ("mean_delta_p", "mean Δp (probability of the actual next token)", ""),
    ("rms_delta_p", "RMS Δp", "llama.cpp, LLaMA-3-8B: bf16 vs fp16 0.15%"),
    ("ppl_ref", "perplexity, reference", ""),
    ("ppl_target", "perplexity, target", ""),
    ("delta_ppl", "ΔPPL (target − reference)", ""),
    ("ppl_rel_delta", "|PPL(target) / PPL(reference) − 1|", "the seed's '<1%' requirement, here measured"),
    ("cosine_min", "cosine similarity of logits, min over prompts", "msprobe: < 0.99 (with MaxAbsErr > 0.001) fails"),
    ("cosine_mean", "cosine similarity, mean over prompts", ""),
    ("max_abs_err", "MaxAbsErr of logits", "msprobe: > 1 fails"),
    ("max_rel_err", "MaxRelativeErr of logits", ""),
    ("thousandth_err_ratio", "share of logits with relative error < 0.001", "msprobe one-thousandth ratio"),
    ("five_thousandths_err_ratio", "share of logits with relative error < 0.005", "msprobe five-thousandths ratio"),
    ("msprobe_failed_prompts", "prompts failing msprobe's pass rule", ""),
    ("greedy_first_token_agreement", "greedy first token agreement", ""),
    ("greedy_common_prefix_mean", "greedy common prefix (tokens, mean)", "vLLM check_logprobs_close walks this"),
    ("n_positions", "positions compared (finite on both sides)", ""),
    ("n_prompts", "prompts compared", ""),
    ("nonfinite_count", "positions with NaN/inf", "any NaN/inf fails msprobe"),
)
# Keys whose names would mislead the formatting heuristic of by_name.
FORMAT_BY_KEY = {"ppl_ratio": num, "msprobe_failed_prompts": num, "mean_delta_p": pct}
PER_PROMPT_COLUMNS = (
    ("n_positions", "Positions"), ("kld_mean", "KLD mean"), ("kld_max", "KLD max"),
    ("top1_agreement", "Top-1 agreement"), ("top1_ties", "Ties"), ("top5_overlap", "Top-5 overlap"),
    ("rms_delta_p", "RMS Δp"), ("ppl_ref", "PPL ref"), ("ppl_target", "PPL target"),
    ("cosine", "Cosine"), ("cosine_min", "Cosine"), ("max_abs_err", "MaxAbsErr"), ("max_rel_err", "MaxRelErr"),
    ("msprobe_pass", "msprobe"), ("greedy_common_prefix", "Greedy common prefix"),
    ("nonfinite_count", "NaN/inf positions"),
)


def metric_text(key: str, value: Any) -> str:
    if isinstance(value, bool):
        return _passed(value)
    return FORMAT_BY_KEY.get(key, lambda v: by_name(key, v))(value)


def precision_section(data: TargetData, prompts: list[str]) -> dict:
    c = data.compare
    if c is None:
        return {"target": data.name, "available": False, "reason": data.absent.get("compare", NOT_RUN)}
    verdict = c.get("verdict") or {}
    status = verdict.get("status") if verdict.get("status") in ("pass", "fail") else UNKNOWN
    values = {**c, "ppl_rel_delta": relative_ppl(c), "nonfinite_count": nonfinite_count(c)}
    return {
        "target": data.name, "available": True, "reason": "",
        "verdict": VERDICT_LABEL[status], "reasons": list(verdict.get("reasons") or []),
        "notes": list(verdict.get("notes") or []),
        "lower_bound": bool(c.get("kld_is_lower_bound")),
        "tie_tolerance": show(c.get("tie_tolerance")),
        "metrics": table(["Metric", "Value", "Anchor"],
                         [[label, metric_text(key, values.get(key)), anchor] for key, label, anchor in METRICS]),
        "checks": table(["Check", "Metric", "Value", "Op", "Threshold", "Passed", "Anchor"],
                        [_check_row(check) for check in verdict.get("checks") or []]),
        "per_prompt": per_prompt_table(c.get("per_prompt") or [], prompts),
    }


def _check_row(check: dict) -> list[str]:
    metric = check.get("metric") or check.get("name", "")
    return [check.get("name", UNKNOWN), metric, metric_text(metric, check.get("value")), check.get("op", ""),
            metric_text(metric, check.get("threshold")), _passed(check.get("passed")), check.get("anchor", "")]


def relative_ppl(c: dict) -> float | None:
    if _is_number(c.get("ppl_rel_delta")):
        return c["ppl_rel_delta"]
    if _is_number(c.get("delta_ppl")) and _is_number(c.get("ppl_ref")) and c["ppl_ref"]:
        return abs(c["delta_ppl"] / c["ppl_ref"])
    return None


def nonfinite_count(c: dict, side: str | None = None) -> int | None:
    """NaN/inf positions: compare.py lists them ({prompt, row, side}) and counts them (nonfinite_count)."""
    listed = c.get("nonfinite")
    if isinstance(listed, list):
        return sum(1 for entry in listed if side is None or entry.get("side") == side)
    if _is_number(c.get("nonfinite_count")):
        return c["nonfinite_count"]
    return listed


def _passed(value: Any) -> str:
    return {True: "✅", False: "❌"}.get(value, "❔ not available")


def per_prompt_table(per_prompt: list[dict], prompts: list[str]) -> dict:
    frame = pd.DataFrame(per_prompt)
    if frame.empty:
        return table(["#", "Prompt"], [])
    if "index" not in frame:
        frame["index"] = range(len(frame))
    columns = list(dict.fromkeys(key for key, _ in PER_PROMPT_COLUMNS if key in frame))
    labels = {key: label for key, label in reversed(PER_PROMPT_COLUMNS)}
    rows = [[str(row["index"]), clip(_prompt(prompts, row["index"]))]
            + [metric_text(key, _scalar(row[key])) for key in columns] for _, row in frame.iterrows()]
    return table(["#", "Prompt"] + [labels[key] for key in columns], rows)


def _scalar(value: Any) -> Any:
    # pandas turns missing values into NaN; the report says "unavailable" for them as for nulls.
    if isinstance(value, float) and value != value:
        return None
    return value.item() if hasattr(value, "item") else value


def _prompt(prompts: list[str], index: Any) -> str:
    try:
        return prompts[int(index)]
    except (IndexError, TypeError, ValueError):
        return UNKNOWN


# ---- predictions


def predictions_section(targets: list[TargetData], prompts: list[str]) -> dict:
    reference = targets[0]
    header = ["#", "Prompt"]
    for t in targets:
        header += [f"{t.name}: first token", f"{t.name}: greedy continuation"]
    rows = []
    for i, prompt in enumerate(prompts):
        row = [str(i), prompt]
        for t in targets:
            token, text = _greedy(t, i)
            differs = t is not reference and reference.ran and t.ran and token != _greedy(reference, i)[0]
            row += [f"{token} (≠ reference)" if differs else token, text]
        rows.append(row)
    agreement = [_first_token_agreement(t, reference, len(prompts)) for t in targets[1:]]
    return {"table": table(header, rows), "agreement": agreement}


def _greedy(t: TargetData, index: int) -> tuple[str, str]:
    if not t.ran:
        return NOT_RUN, NOT_RUN
    tokens = (t.meta.get("greedy_tokens") or [])
    texts = (t.meta.get("greedy_text") or [])
    token = tokens[index][0] if index < len(tokens) and tokens[index] else ABSENT
    text = texts[index] if index < len(texts) else ABSENT
    return (token or "(empty)"), (text or "(empty)")


def _first_token_agreement(t: TargetData, reference: TargetData, count: int) -> str:
    if not (t.ran and reference.ran) or not count:
        return f"{t.name}: {NOT_RUN}"
    same = sum(_greedy(t, i)[0] == _greedy(reference, i)[0] for i in range(count))
    return f"{t.name}: {same}/{count} first tokens equal the reference's ({pct(same / count)})"


# ---- determinism and samples


def determinism_section(data: TargetData) -> dict:
    d = data.determinism
    if d is None:
        return {"target": data.name, "table": None, "reason": data.absent.get("determinism", NOT_RUN)}
    rows = [[str(i), p.get("prompt", ""), p.get("first_token") or "(empty)",
             YES if p.get("identical_across_repeats") else NO, YES if p.get("batch_invariant") else NO]
            for i, p in enumerate(d.get("per_prompt") or [])]
    mismatches = [f"prompt {m.get('prompt')}, repeat {m.get('repeat')}: first differs at token "
                  f"{m.get('first_difference')}" for m in d.get("repeat_mismatches") or []]
    mismatches += [f"prompt {m.get('prompt')} alone vs in the batch: first differs at token "
                   f"{m.get('first_difference')}" for m in d.get("batch_mismatches") or []]
    return {
        "target": data.name, "reason": "",
        "table": table(["#", "Prompt", "Predicted token", "Identical across repeats", "Batch-invariant"], rows),
        "repeat_rate": pct(d.get("repeat_identical_rate")), "batch_rate": pct(d.get("batch_invariant_rate")),
        "prompts": show(d.get("prompts")), "repeats": show(d.get("repeats")), "max_tokens": show(d.get("max_tokens")),
        "mismatches": mismatches,
    }


def samples_section(data: TargetData) -> dict:
    s = data.samples
    if s is None:
        return {"target": data.name, "reason": data.absent.get("samples", NOT_RUN), "tables": []}
    header = ["#", "Prompt", "Generated text", "Tokens"]
    english, cjk = [], []
    for i, sample in enumerate(s.get("samples") or []):
        row = [str(i), sample.get("prompt", ""), sample.get("text") or "(empty)", show(sample.get("tokens"))]
        (cjk if is_cjk(sample.get("prompt", "")) else english).append(row)
    settings = s.get("settings") or {}
    tables = [{"title": title, "table": table(header, rows)}
              for title, rows in (("English prompts", english), ("Chinese (CJK) prompts", cjk)) if rows]
    return {"target": data.name, "reason": "", "tables": tables,
            "settings": ", ".join(f"{k}={show(v)}" for k, v in settings.items())}


# ---- theory, performance, plots


def theory_section(targets: list[TargetData]) -> dict:
    facts = [
        ["exponent bits", "8", "8", "same dynamic range"],
        ["mantissa bits (stored)", "7", "23", ""],
        ["unit roundoff (max relative rounding error)", "2^-8 ≈ 3.9e-3 (0.39%)", "2^-24 ≈ 6.0e-8", "per rounding"],
        ["largest finite value", "≈ 3.39e38", "≈ 3.40e38", ""],
        ["smallest normal value", "≈ 1.18e-38", "≈ 1.18e-38", ""],
    ]
    measured = [[t.name, parse_target(t.name).dtype, sci(t.compare.get("max_rel_err")),
                 pct(t.compare.get("thousandth_err_ratio")), sci(t.compare.get("kld_mean")),
                 pct(t.compare.get("top1_agreement"))]
                for t in targets if t.compare is not None]
    return {
        "facts": table(["Property", "bf16", "fp32", "Note"], facts),
        "measured": table(["Target", "dtype", "MaxRelativeErr", "rel. err < 0.001", "KLD mean", "Top-1 agreement"],
                          measured),
    }


def performance_section(targets: list[TargetData], config: dict | None = None) -> dict:
    """Benchmarks (the seed's tables plus percentiles), serving, the roofline and the consistency flags."""
    from portcheck.benchmarks import statistics as perf

    config = config or {}
    tolerance = float((config.get("bench") or {}).get("consistency_tolerance", 0.25))
    hardware_table = config.get("hardware") or {}
    overview, roofline_rows, flag_rows, sections = [], [], [], []
    for t in targets:
        bench, serve = t.extra.get("bench"), t.extra.get("serve")
        engine = parse_target(t.name).engine
        serve_reason = ("the serving check starts vllm serve: vllm targets only" if engine != "vllm"
                        else t.absent.get("serve", NOT_RUN))
        section = {"target": t.name, "bench": None, "bench_reason": t.absent.get("bench", NOT_RUN),
                   "serve": _serve_view(serve) if serve else None, "serve_reason": serve_reason}
        if bench is None:
            overview.append([t.name] + [NOT_RUN] * 7)
            roofline_rows.append([t.name, NOT_RUN] + [DASH] * 9)
            sections.append(section)
            continue
        section["bench"] = _bench_view(bench)
        mem, timings = bench.get("memory") or {}, bench.get("timings") or {}
        capacity = mem.get("capacity") or {}
        overview.append([t.name, _sec(timings.get("engine_start_s")), _sec(timings.get("weight_load_s")),
                         _bytes((mem.get("weights") or {}).get("bytes")), _bytes((mem.get("peak") or {}).get("bytes")),
                         show(capacity.get("kv_cache_tokens")), show(capacity.get("max_concurrency")),
                         _sec(timings.get("total_s"))])
        hw_name = ((config.get("targets") or {}).get(t.name) or {}).get("hardware")
        hardware = hardware_table.get(hw_name) if hw_name else None
        latency, prefill = bench.get("latency") or {}, bench.get("prefill") or {}
        weights = mem.get("weights") or {}
        prefill_tokens = (prefill.get("prompts") or 0) * (prefill.get("input_len") or 0)
        roof = perf.roofline(weights.get("bytes"), (latency.get("tpot_s") or {}).get("p50"), hardware,
                             weights.get("parameters"), prefill_tokens, (prefill.get("latency_s") or {}).get("p50"))
        if hw_name and hardware is None:
            hw_text = f"{hw_name} (not in the hardware table: peak unknown)"
        elif hardware is None:
            hw_text = f"peak unknown (no hardware configured for this {parse_target(t.name).device} target)"
        else:
            hw_text = f"{hw_name} ({hardware.get('source', 'no source given')})"
        roofline_rows.append([
            t.name, hw_text, _bandwidth(roof["memory_bandwidth_bytes_s"]), _bytes(roof["weight_bytes"]),
            _ms(roof["decode_floor_s"]), _ms(roof["tpot_s"]), _ratio(roof["tpot_over_floor"]),
            _flops(roof["prefill_achieved_flops"]), _flops(roof["bf16_dense_flops"]),
            pct(roof["prefill_flops_utilisation"]) if roof["prefill_flops_utilisation"] is not None else UNKNOWN,
            f"{prefill.get('prompts')} x {prefill.get('input_len')} tokens",
        ])
        for flag in perf.consistency_flags(bench, tolerance, roof["decode_floor_s"]):
            verdict = {True: "✅ fits", False: "❌ does not fit", None: "❔ not checkable"}[flag["ok"]]
            flag_rows.append([t.name, flag["check"], flag["subject"], _fig(flag["check"], flag["measured"]),
                              _fig(flag["check"], flag["expected"]), flag["relation"], _ratio(flag["ratio"]),
                              f"±{flag['tolerance']:.0%}" if flag["relation"] == "≈" else f"{flag['tolerance']:.0%} slack",
                              verdict, flag["note"]])
        sections.append(section)
    return {
        "overview": table(["Target", "Engine start (s)", "Weight load (s)", "Weights (text, target dtype)",
                           "Peak memory", "KV cache (tokens)", "Max concurrency", "Benchmark wall time (s)"], overview),
        "targets": sections,
        "roofline": table(["Target", "Hardware (source)", "Peak bandwidth", "Weight bytes / step", "Decode floor / step (ms)",
                           "Achieved TPOT p50 (ms)", "TPOT / floor", "Prefill FLOPS achieved", "Peak bf16 FLOPS",
                           "Prefill FLOPS utilisation", "Prefill run"], roofline_rows),
        "consistency": table(["Target", "Check", "Figures", "Measured", "Expected", "Relation", "Ratio", "Tolerance",
                              "Verdict", "Note"], flag_rows),
        "tolerance": tolerance,
        "flags_failed": sum(1 for row in flag_rows if row[8].startswith("❌")),
    }


LATENCY_ROWS = (("ttft_s", "TTFT (time to first token)"), ("tpot_s", "TPOT (per output token, first excluded)"),
                ("itl_s", "ITL (inter-token gaps, pooled)"), ("e2e_s", "E2E (request latency)"),
                ("batch_latency_s", "Whole-batch latency"))


def _bench_view(bench: dict) -> dict:
    plan, latency, prefill = bench.get("plan") or {}, bench.get("latency") or {}, bench.get("prefill") or {}
    percentiles = bench.get("percentiles") or [50, 90, 99]
    tables = []
    for grid in bench.get("throughput") or []:
        rows = [[show(r.get("batch_size")), show(r.get("max_tokens")), _num3(r.get("elapsed_s")),
                 show(r.get("output_tokens")), _num1(r.get("output_tok_s")), _num1(r.get("total_tok_s")),
                 _speedup(r.get("speedup_vs_batch1")), _ratio(r.get("linear_ratio"))]
                for r in grid.get("rows") or []]
        tables.append({"title": grid.get("title") or "throughput",
                       "table": table(["Batch size", "max_tokens", "Elapsed (s, median)", "Output tokens",
                                       "Output tok/s", "Total tok/s (prompt + output)", "Speed-up vs batch 1",
                                       "Ratio to linear"], rows)})
    keys = [f"p{p:g}" for p in percentiles]
    lat_rows = [[label] + [_ms((latency.get(key) or {}).get(k)) for k in keys + ["mean"]]
                + [show((latency.get(key) or {}).get("n"))] for key, label in LATENCY_ROWS]
    lat_rows.append([f"Prefill latency ({prefill.get('prompts')} prompts x {prefill.get('input_len')} tokens)"]
                    + [_ms((prefill.get("latency_s") or {}).get(k)) for k in keys + ["mean"]]
                    + [show((prefill.get("latency_s") or {}).get("n"))])
    ttft, tpot = (latency.get("ttft_s") or {}).get("p50"), (latency.get("tpot_s") or {}).get("p50")
    seed_rows = [[f"Prefill latency ({prefill.get('prompts')} prompts)", _ms((prefill.get("latency_s") or {}).get("p50"))],
                 [f"Decode latency per step ({latency.get('batch_size')} prompts, TPOT p50)", _ms(tpot)],
                 [f"Time to first token ({latency.get('batch_size')} prompts, p50)", _ms(ttft)]]
    mem = bench.get("memory") or {}
    capacity, peak = mem.get("capacity") or {}, mem.get("peak") or {}
    engine_params = mem.get("engine_parameters") or {}
    memory_rows = [["Weights (text, target dtype)", _bytes((mem.get("weights") or {}).get("bytes")),
                    (mem.get("weights") or {}).get("source", "")],
                   ["Engine parameters", _bytes(engine_params.get("bytes")), engine_params.get("source", "")],
                   ["Peak memory", _bytes(peak.get("bytes")), peak.get("source", "")],
                   ["KV cache", f"{capacity['kv_cache_tokens']:,} tokens" if _is_number(capacity.get("kv_cache_tokens"))
                    else DASH, capacity.get("note", "")],
                   ["Maximum concurrency", show(capacity.get("max_concurrency")),
                    f"max_model_len={show(capacity.get('max_model_len'))}" if capacity.get("max_model_len") else ""]]
    timings = bench.get("timings") or {}
    return {
        "tables": tables,
        "latency": table(["Metric (ms)"] + keys + ["mean", "n"], lat_rows),
        "seed_form": table(["Metric", "Measured (ms)"], seed_rows),
        "memory": table(["Resource", "Usage", "Source"], memory_rows),
        "plan": (f"prompts of {plan.get('input_len')} random token ids; grid: {plan.get('warmup')} warm-up + "
                 f"{plan.get('repetitions')} timed run(s) per cell (median); latency: batch {latency.get('batch_size')}, "
                 f"{latency.get('input_len')} prompt + {latency.get('output_len')} output tokens, "
                 f"{latency.get('warmup')} warm-up + {latency.get('repetitions')} timed runs "
                 f"({latency.get('requests')} requests); temperature {show(plan.get('temperature'))}; engine start "
                 f"{_sec(timings.get('engine_start_s'))} s, grid {_sec(timings.get('grid_s'))} s, latency runs "
                 f"{_sec(timings.get('latency_runs_s'))} s"),
    }


def _serve_view(serve: dict) -> dict:
    rows = []
    for level in serve.get("levels") or []:
        def pair(key):
            s = level.get(key) or {}
            return f"{_ms(s.get('p50'))} / {_ms(s.get('p99'))}"
        rows.append([show(level.get("concurrency")), show(level.get("requests")), show(level.get("completed")),
                     show(len(level.get("errors") or [])), _num1(level.get("output_tok_s")),
                     _num1(level.get("total_tok_s")), _num3(level.get("requests_s")), pair("ttft_s"),
                     pair("tpot_s"), pair("itl_s"), pair("e2e_s")])
    greedy = serve.get("greedy_check") or {}
    checked = len(greedy.get("prompts") or [])
    seed = serve.get("seed_request") or {}
    return {
        "levels": table(["Concurrency", "Requests", "Completed", "Errors", "Output tok/s", "Total tok/s", "Requests/s",
                         "TTFT p50 / p99 (ms)", "TPOT p50 / p99 (ms)", "ITL p50 / p99 (ms)", "E2E p50 / p99 (ms)"], rows),
        "greedy": (f"{YES if greedy.get('status') == 'ok' else NO} {show(greedy.get('equal'))}/{checked} greedy "
                   f"completions through the server equal the offline engine's greedy tokens "
                   f"({show(greedy.get('offline_target'))} dump)") if greedy.get("status") != "not determined"
        else f"❔ not determined: {greedy.get('reason')}",
        "ready": _sec(serve.get("server_ready_s")), "port": show(serve.get("port")),
        "preferred_port": show(serve.get("preferred_port")), "command": serve.get("command") or "",
        "curl": seed.get("curl") or "", "curl_ok": bool(seed.get("ok")),
        "curl_text": seed.get("text") if seed.get("ok") else f"error: {seed.get('error')}",
        "definitions": serve.get("definitions") or "",
    }


def _ms(value: Any) -> str:
    return f"{value * 1e3:.2f}" if _is_number(value) else (UNKNOWN if value is None else str(value))


def _sec(value: Any) -> str:
    return f"{value:.2f}" if _is_number(value) else UNKNOWN


def _num1(value: Any) -> str:
    return f"{value:,.1f}" if _is_number(value) else UNKNOWN


def _num3(value: Any) -> str:
    return f"{value:.3f}" if _is_number(value) else UNKNOWN


def _speedup(value: Any) -> str:
    return f"{value:.2f}×" if _is_number(value) else DASH


def _ratio(value: Any) -> str:
    return f"{value:.2f}" if _is_number(value) else DASH


def _bytes(value: Any) -> str:
    if not _is_number(value):
        return UNKNOWN
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if value >= size:
            return f"{value / size:.2f} {unit}"
    return f"{value} B"


def _bandwidth(value: Any) -> str:
    return f"{value / 1e12:.2f} TB/s" if _is_number(value) else "unknown (not configured)"


def _flops(value: Any) -> str:
    if not _is_number(value):
        return UNKNOWN
    return f"{value / 1e12:.2f} TFLOPS" if value >= 1e11 else f"{value / 1e9:.2f} GFLOPS"


def _fig(check: str, value: Any) -> str:
    """A consistency figure in its unit: tok/s for throughput checks, ms otherwise."""
    if "tok/s" in check:
        return _num1(value)
    return _ms(value) + " ms" if _is_number(value) else (UNKNOWN if value is None else str(value))


def plot_list(plots: dict) -> list[dict]:
    return [{"name": name, "title": PLOT_TITLES.get(name, name.replace("_", " ")), "path": str(path),
             "url": quote(str(path))}
            for name, path in plots.items()]


# ---- artifacts and reproducibility


def artifacts_section(artifacts: dict, targets: list[TargetData], manifest: dict | None, config: dict) -> dict:
    rows = []
    if artifacts.get("manifest"):
        rows.append(_artifact_row(artifacts["manifest"], "manifest", DASH, f"portcheck {__version__}"))
    for t in targets:
        paths = artifacts["targets"][t.name]
        for kind in ("env", "logits", "adaptation", "determinism", "samples", "bench", "serve"):
            if paths.get(kind) and Path(paths[kind]).is_file():
                rows.append(_artifact_row(paths[kind], kind, t.name, _versions_text(t)))
        compare = (artifacts.get("compare") or {}).get(t.name)
        if compare and Path(compare).is_file():
            rows.append(_artifact_row(compare, "compare", t.name, f"portcheck {__version__}"))
    commits = sorted({t.env.get("workflow_commit") for t in targets if t.env and t.env.get("workflow_commit")})
    return {
        "table": table(["File", "Kind", "Target", "SHA-256 (prefix)", "Built with"], rows),
        "portcheck_version": __version__,
        "workflow_commits": commits or [UNKNOWN],
        "config_sha": sha256_json(config)[:SHA_PREFIX],
        "command": regenerate_command(artifacts.get("configfile")),
    }


def _artifact_row(path, kind: str, target: str, built_with: str) -> list[str]:
    return [str(path), kind, target, sha256_file(path)[:SHA_PREFIX], built_with]


def _versions_text(t: TargetData) -> str:
    present = [f"{name} {version}" for name, version in sorted(t.versions.items()) if version]
    return ", ".join(present) or UNKNOWN


def regenerate_command(configfile: str | os.PathLike | None) -> str:
    command = list(REGENERATE)
    if configfile and os.path.normpath(str(configfile)) != os.path.normpath(DEFAULT_CONFIGFILE):
        command += ["--configfile", str(configfile)]
    return shlex.join(command + ["report"])


# ---------------------------------------------------------------- rendering


def make_environment(template_dir: str | os.PathLike) -> Environment:
    env = Environment(
        loader=FileSystemLoader(str(template_dir)),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,  # markdown, not HTML: `cell` does the escaping that matters
    )
    env.filters.update(cell=cell, sci=sci, pct=pct, num=num, table=markdown_table)
    return env


def render_report(template_path: str | os.PathLike, out_path: str | os.PathLike, context: dict) -> None:
    """Render the template to out_path atomically. Plot links are checked against out_path's folder,
    so the report never links to a picture that is not there."""
    template_path, out_path = Path(template_path), Path(out_path)
    context = {**context, "plots": [{**p, "exists": (out_path.parent / p["path"]).is_file()} for p in context["plots"]]}
    text = make_environment(template_path.parent).get_template(template_path.name).render(**context)
    with atomic_path(out_path) as tmp:
        tmp.write_text(text, encoding="utf-8")
