"""The report: escaping, context building and rendering from hand-made artifacts, source lines, section
headings and anchors, plots."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from safetensors.numpy import save_file

from portcheck.benchmarks.checks import check_benchmarks
from portcheck.config import load_schema, validate_config
from portcheck.errors import PortcheckError
from portcheck.report import history, plots
from portcheck.report.format import UNKNOWN, cell, markdown_table, pct, sci, table
from portcheck.report.render import SECTIONS, anchor, build_context, render_report, section_headings
from portcheck.report.sections.artifacts import regenerate_command
from portcheck.report.sections.precision import per_prompt_table

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = REPO / "reports" / "templates" / "report.md.j2"
REFERENCE, TARGET = "cpu-hf-fp32", "cpu-hf-bf16"
HOSTILE = [
    "The capital of France is",
    "a | b || c",
    "line one\nline two\r\nthree\rfour\tfive",
    "`code` and ```fence``` \\ back\\slash \\|",
    "<script>alert(1)</script> & [link](http://x) *em* _u_ $x$",
    "法国的首都是",
]
# The validated config, schema defaults filled in, as the render rule passes it.
CONFIG = validate_config(yaml.safe_load((REPO / "config" / "config.yaml").read_text()),
                         load_schema(REPO / "config" / "schema.yaml"), base_dir=REPO)
# Every section's heading line, from the one list (portcheck.report.render.SECTIONS).
H = {key: "## " + value["heading"] for key, value in section_headings().items()}
HEADINGS = [H[key] for key, _ in SECTIONS if key != "history"]


# ---------------------------------------------------------------- cell escaping


def unescaped_pipes(line: str) -> int:
    """Pipes that delimit cells, read as GFM does: a backslash escapes the next character."""
    return sum(1 for token in re.findall(r"\\.|\|", line) if token == "|")


@pytest.mark.parametrize("text", HOSTILE + ["|", "\\", "\\|", "||\n|", "x\x00y\u2028z\x0bw"])
def test_cell_keeps_hostile_text_on_one_line_without_delimiters(text):
    escaped = cell(text)
    assert unescaped_pipes(escaped) == 0
    assert not re.search(r"[\n\r\t\x00-\x1f\u2028\u2029]", escaped)
    assert "<" not in escaped and ">" not in escaped
    assert re.search(r"(?<!\\)(\\\\)*`", escaped) is None  # every backtick is escaped


def test_cell_exact_escapes():
    assert cell("a|b") == "a\\|b"
    assert cell("C:\\dir") == "C:\\\\dir"
    assert cell("`x`") == "\\`x\\`"
    assert cell("<b>&") == "&lt;b&gt;&amp;"
    assert cell("one\ntwo\r\nthree\rfour\tfive") == "one↵two↵three␍four⇥five"
    assert cell("x\u2028y") == "x⟨U+2028⟩y"
    assert cell("法国的首都是") == "法国的首都是"


def test_cell_empty_and_none():
    assert cell("") == ""
    assert cell(None) == ""
    assert cell("", empty="(empty)") == "(empty)"
    assert cell(0) == "0"


def test_markdown_table_rejects_ragged_rows():
    with pytest.raises(ValueError, match="2 cells"):
        markdown_table(table(["a", "b", "c"], [["1", "2"]], "x.json (k)"))


def test_markdown_table_ends_with_its_escaped_source_and_requires_one():
    text = markdown_table(table(["a"], [["1"]], "results/m/<target>/bench_checks.json (roofline.decode_floor_s)"))
    assert text.endswith("\n\n*Source: results/m/&lt;target&gt;/bench\\_checks.json (roofline.decode\\_floor\\_s)*")
    assert markdown_table({"header": ["a"], "rows": []}, source="history.jsonl").endswith("*Source: history.jsonl*")
    with pytest.raises(ValueError, match="names no source"):
        markdown_table({"header": ["a"], "rows": []})


def test_number_formats():
    assert sci(2.5e-5) == "2.50e-05"
    assert sci(0) == "0"
    assert sci(None) == "unavailable"
    assert pct(0.9974) == "99.74%"
    assert pct(1.0) == "100%"
    assert pct(0.999996) == ">99.99%"
    assert pct(None) == "unavailable"


def test_per_prompt_table_columns_are_the_union_of_the_rows_keys_and_a_missing_one_is_unavailable():
    rows = [{"index": 1, "n_positions": 5, "kld_mean": 1e-3, "msprobe_pass": True},
            {"index": 0, "n_positions": 4, "nonfinite_count": 2}]
    t = per_prompt_table(rows, ["first prompt", "second prompt"], "compare/t.json: per_prompt")
    assert t["header"] == ["#", "Prompt", "Positions", "KLD mean", "msprobe", "NaN/inf positions"]
    assert t["rows"] == [["1", "second prompt", "5", "1.00e-03", "✅", "unavailable"],
                         ["0", "first prompt", "4", "unavailable", "unavailable", "2"]]
    # rows without an index are numbered by position; an index past the prompts reads unknown
    assert [r[:2] for r in per_prompt_table([{"n_positions": 1}, {"index": 7}], ["a"], "s")["rows"]] == [
        ["0", "a"], ["7", UNKNOWN]]
    assert per_prompt_table([], ["a"], "s") == {"header": ["#", "Prompt"], "rows": [], "source": "s"}


def test_regenerate_command_adds_configfile_only_when_not_default():
    assert regenerate_command(None) == "snakemake --cores 1 report"
    assert regenerate_command("config/config.yaml") == "snakemake --cores 1 report"
    assert regenerate_command("config/npu run.yaml") == (
        "snakemake --cores 1 --configfile 'config/npu run.yaml' report"
    )


# ---------------------------------------------------------------- hand-made artifacts


def write_json(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return path


def write_dump(path: Path, target: str, prompts: list[str], first_tokens: list[str]) -> Path:
    """A dump as portcheck.dump.logits_file writes it: tensors per prompt, string metadata, JSON for
    non-strings (json_keys)."""
    meta = {
        "target": target, "device": "cpu", "engine": "hf", "dtype": target.rsplit("-", 1)[1],
        "model_sha": "m" * 64, "tokenizer_sha": "t" * 64, "prompts_sha": "p" * 64,
        "prompts": prompts,
        "greedy_text": [f"{tok} and | more\ntext" for tok in first_tokens],
        "greedy_tokens": [[tok, " and"] for tok in first_tokens],
        "gdn_impl": {"kind": "reference PyTorch fallback"},
        "versions": {"torch": "2.13.0", "transformers": "5.19.0", "vllm": None},
        "settings": {"threads": None, "seed": 0, "max_model_len": None, "enforce_eager": True},
        "run_seconds": 1.5,
        "kind": "full", "num_prompts": len(prompts),
    }
    json_keys = sorted(k for k, v in meta.items() if not isinstance(v, str))
    header = {k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}
    header.update(format="portcheck-logits", format_version="1", json_keys=json.dumps(json_keys))
    tensors = {}
    for i in range(len(prompts)):
        tensors[f"input_ids.{i}"] = np.arange(3, dtype=np.int64)
        tensors[f"logits.{i}"] = np.zeros((3, 5), dtype=np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=header)
    return path


def env_json(target: str) -> dict:
    return {
        "target": target, "python": "3.11.9", "os": "Ubuntu 22.04 (x86_64)", "cpu": "Test CPU", "cpu_count": 4,
        "ram_bytes": 8 * 2**30, "versions": {"torch": "2.13.0", "transformers": "5.19.0", "vllm": None, "cann": None},
        "gpu": None, "npu": None, "workflow_commit": "abc123",
    }


def adaptation_json(target: str, extra: bool) -> dict:
    items = {
        "engine_class": {"value": "Qwen3_5ForCausalLM", "status": "ok", "note": "class | instantiated"},
        "weights_load": {"value": {"missing": 0, "mismatched": 0}, "status": "ok", "note": ""},
        "kv_cache_tokens": {"value": None, "status": "not determined", "note": "hf has no fixed capacity"},
    }
    if extra:
        items["ssm_state_dtype"] = {"value": "float32", "status": "failed", "note": "expected float32"}
    return {"target": target, "items": items}


def compare_json(n_prompts: int, status: str = "fail", lower_bound: bool = False) -> dict:
    """The shape compare.py writes (see compare.compare_dumps)."""
    per_prompt = [
        {"index": i, "n_rows": 3, "n_positions": 3, "kld_mean": 1e-3 * (i + 1), "kld_max": 2e-3 * (i + 1),
         "kld": [0.0, 1e-4 * (i + 1), None if i == 0 else 3e-3], "top1_agreement": 1.0 if i else 2 / 3,
         "top1_ties": 0, "rms_delta_p": 0.001, "ppl_ref": 10.0, "ppl_target": 10.2, "cosine": 0.9999,
         "max_abs_err": 0.1, "max_rel_err": 0.03, "msprobe_pass": i != 2, "greedy_common_prefix": 8,
         "greedy_first_token_agrees": True, "nonfinite_count": 0}
        for i in range(n_prompts)
    ]
    checks = [
        {"name": "kld_p99_max", "metric": "kld_p99", "value": 0.06, "op": "<=", "threshold": 0.05,
         "anchor": "llama.cpp p99", "passed": False, "status": "fail"},
        {"name": "top1_agreement_min", "metric": "top1_agreement_with_ties", "value": 0.9444, "op": ">=",
         "threshold": 0.97, "anchor": "llama.cpp same top p", "passed": False, "status": "fail"},
        {"name": "cosine_min", "metric": "cosine_min", "value": 0.99971, "op": ">=", "threshold": 0.99,
         "anchor": "msprobe", "passed": True, "status": "pass"},
        {"name": "msprobe_rule", "metric": "msprobe_failed_prompts", "value": None, "op": "<=", "threshold": 0,
         "anchor": "msprobe pass rule", "passed": None, "status": "inconclusive"},
    ]
    return {
        "kld_mean": 1.234e-3, "kld_mean_stderr": 1e-4, "kld_median": 1e-4, "kld_p99": 0.06, "kld_p999": 0.079,
        "kld_max": 0.08, "kld_is_lower_bound": lower_bound, "n_prompts": n_prompts, "n_rows": 3 * n_prompts,
        "n_positions": 3 * n_prompts, "top1_agreement": 0.9444, "top1_ties": 1, "top1_agreement_with_ties": 0.9444,
        "top5_overlap": 0.98, "n_next_token_positions": 2 * n_prompts, "mean_delta_p": -0.0002,
        "rms_delta_p": 0.0015, "ppl_ref": 10.0, "ppl_target": 10.2, "delta_ppl": 0.2, "ppl_ratio": 1.02,
        "ppl_rel_delta": 0.02, "cosine_min": 0.99971, "cosine_mean": 0.99993, "max_abs_err": 0.125,
        "max_rel_err": 0.031, "thousandth_err_ratio": 0.41, "five_thousandths_err_ratio": 0.87,
        "msprobe_failed_prompts": 1, "greedy_first_token_agreement": 1.0, "greedy_common_prefix_mean": 7.5,
        "nonfinite": [], "nonfinite_count": 0, "tie_tolerance": 0.04,
        "reference": {"name": REFERENCE, "kind": "full", "path": "r"}, "target": {"name": TARGET, "kind": "full"},
        "per_prompt": per_prompt,
        "verdict": {"status": status, "checks": checks,
                    "reasons": ["kld_p99_max: kld_p99 = 0.06 is not <= 0.05", "top1 94.44% < 97%"],
                    "inconclusive": ["msprobe_rule: msprobe_failed_prompts is not available for this comparison"],
                    "notes": []},
    }


def manifest_json() -> dict:
    return {
        "source": {"kind": "hf", "repo_id": "Qwen/Qwen3.5-0.8B-Base", "revision": "main"},
        "files": [{"path": "model.safetensors", "bytes": 100, "sha256": "0" * 64}],
        "total_bytes": 1_700_000_000, "model_sha": "m" * 64, "tokenizer_sha": "t" * 64,
        "tensor_count": 488, "text_tensors": 300, "vision_tensors": 150, "mtp_tensors": 38,
        "parameters": {"text": 752_000_000, "vision": 100_000_000, "mtp": 20_000_000, "total": 872_000_000},
        "dtypes": {"BF16": {"tensors": 488, "bytes": 1_700_000_000}},
        "config": {
            "architectures": ["Qwen3_5ForConditionalGeneration"], "model_type": "qwen3_5", "hidden_size": 1024,
            "num_hidden_layers": 24, "num_attention_heads": 8, "num_key_value_heads": 2, "head_dim": 256,
            "intermediate_size": 3584, "vocab_size": 248320, "eos_token_id": 248044,
            "layer_type_counts": {"linear_attention": 18, "full_attention": 6},
            "full_attention_layers": [3, 7, 11, 15, 19, 23], "max_position_embeddings": 262144,
            "tie_word_embeddings": True, "mtp_num_hidden_layers": 1, "mamba_ssm_dtype": "float32",
            "vision_tower": True,
        },
    }


def determinism_json(prompts: list[str]) -> dict:
    return {
        "target": REFERENCE, "prompts": len(prompts), "repeats": 3, "max_tokens": 20,
        "repeat_identical_rate": 1.0, "batch_invariant_rate": 5 / 6,
        "repeat_mismatches": [], "batch_mismatches": [{"prompt": 1, "first_difference": 4}],
        "per_prompt": [
            {"prompt": p, "first_token": " Paris" if i == 0 else "|x", "text": "t",
             "identical_across_repeats": True, "batch_invariant": i != 1}
            for i, p in enumerate(prompts)
        ],
    }


def samples_json(prompts: list[str]) -> dict:
    return {
        "target": REFERENCE, "settings": {"temperature": 0.7, "top_p": 0.9, "max_tokens": 20, "seed": 1234},
        "samples": [{"prompt": p, "text": f"sample {i} | with\nnewline", "tokens": 20} for i, p in enumerate(prompts)],
    }


@pytest.fixture(scope="module")
def plot_pngs(tmp_path_factory):
    """The fixture's plots, drawn once: drawing is the slow part and the data never changes."""
    folder = tmp_path_factory.mktemp("plots")
    compare = {TARGET: write_json(folder / "compare.json", compare_json(len(HOSTILE)))}
    plots.plot_kld_per_position(compare, folder / "kld_per_position.png")
    plots.plot_kld_distribution(compare, folder / "kld_distribution.png")
    return {name: (folder / name).read_bytes() for name in ("kld_per_position.png", "kld_distribution.png")}


@pytest.fixture
def artifacts(tmp_path, plot_pngs):
    results = tmp_path / "results" / "m"
    reports = tmp_path / "reports" / "m"
    targets = {}
    for name, first in ((REFERENCE, " Paris"), (TARGET, " Lyon")):
        d = results / name
        targets[name] = {
            "env": write_json(d / "env.json", env_json(name)),
            "logits": write_dump(d / "logits.safetensors", name, HOSTILE, [first] * len(HOSTILE)),
            "adaptation": write_json(d / "adaptation.json", adaptation_json(name, extra=name == REFERENCE)),
            "determinism": write_json(d / "determinism.json", determinism_json(HOSTILE)) if name == REFERENCE else None,
            "samples": write_json(d / "samples.json", samples_json(HOSTILE)) if name == REFERENCE else None,
        }
    compare = {TARGET: write_json(results / "compare" / f"{TARGET}.json", compare_json(len(HOSTILE)))}
    reports.mkdir(parents=True)
    for name, data in plot_pngs.items():
        (reports / name).write_bytes(data)
    return {
        "model": "m", "manifest": write_json(results / "manifest.json", manifest_json()), "reference": REFERENCE,
        "targets": targets, "compare": compare,
        "plots": {"kld_per_position": "kld_per_position.png", "kld_distribution": "kld_distribution.png"},
    }


def render(artifacts, tmp_path, config=CONFIG) -> str:
    out = tmp_path / "reports" / "m" / "report.md"
    render_report(TEMPLATE, out, build_context(artifacts, config))
    return out.read_text(encoding="utf-8")


def section(text: str, heading: str) -> str:
    start = text.index(heading)
    following = text.find("\n## ", start + len(heading))
    return text[start: following if following != -1 else None]


def table_blocks(text: str) -> list[list[str]]:
    blocks, current = [], []
    for line in text.splitlines():
        if line.startswith("|"):
            current.append(line)
        elif current:
            blocks.append(current)
            current = []
    return blocks + ([current] if current else [])


def row_cells(line: str, column: int) -> str:
    return re.split(r"(?<!\\) \| ", line.strip("| "))[column]


# ---------------------------------------------------------------- the rendered report


def test_sections_present_in_order(artifacts, tmp_path):
    text = render(artifacts, tmp_path)
    positions = [text.index(heading) for heading in HEADINGS]
    assert positions == sorted(positions)
    assert text.startswith("# m port check\n")


def test_what_a_pass_is_worth_names_the_host_that_measured_the_record(artifacts, tmp_path, monkeypatch):
    from portcheck.report.sections import power

    record, path = power.shipped_record(*power.DETECTION_RECORD)
    record = {key: value for key, value in record.items() if key != "host"}
    monkeypatch.setattr(power, "shipped_record", lambda *_: (record, path))
    assert "The record does not name the host that measured it." in render(artifacts, tmp_path / "a")
    record["host"] = {"cpu": "Xeon X", "float_kernel_flags": ["avx2"], "torch": "2.9.0", "vllm": "0.18.0"}
    assert "Measured on Xeon X (avx2), torch 2.9.0, vllm 0.18.0." in render(artifacts, tmp_path / "b")


def test_every_table_has_consistent_columns_with_hostile_text(artifacts, tmp_path):
    text = render(artifacts, tmp_path)
    blocks = table_blocks(text)
    assert len(blocks) >= 15
    for block in blocks:
        counts = {unescaped_pipes(line) for line in block}
        assert len(counts) == 1, block
        assert re.fullmatch(r"\|(---\|)+", block[1]), block[1]
    predictions = section(text, H["predictions"])
    assert "a \\| b \\|\\| c" in predictions
    assert "line one↵line two↵three␍four⇥five" in predictions
    assert "&lt;script&gt;" in predictions and "<script>" not in text


def test_verdict_row_shows_fail_when_compare_fails(artifacts, tmp_path):
    summary = section(render(artifacts, tmp_path), H["summary"])
    row = next(line for line in summary.splitlines() if line.startswith(f"| {TARGET} |"))
    assert row_cells(row, 3) == "❌ fail: seed prompts fail"
    assert row_cells(row, 4) == "1.23e-03"
    assert row_cells(row, 5) == row_cells(row, 6) == "not configured"  # none given: corpus and decode are off
    assert row_cells(row, 7) == "94.44%"
    assert "**Overall: ❌ fail**" in summary
    reference_row = next(line for line in summary.splitlines() if line.startswith(f"| {REFERENCE} |"))
    assert row_cells(reference_row, 3) == "reference"


def corpus_compare_json(status: str) -> dict:
    """The shape compare/corpus.py writes, trimmed to what the report reads."""
    bucket = {"start": 0, "end": 63, "n_positions": 128, "kld_mean": 1e-5, "kld_mean_stderr": 1e-6, "kld_p99": 4e-5,
              "top1_agreement_with_ties": 1.0, "rms_delta_p": 0.001, "ppl_ref": 10.0, "ppl_target": 10.0,
              "status": "pass"}
    later = {**bucket, "start": 64, "end": 127, "kld_mean": 5e-5 if status == "fail" else 1e-5}
    growth = {"first_bucket": "0-63", "kld_first": 1e-5, "kld_later": later["kld_mean"], "ratio": 5.0,
              "ratio_lower": 4.1, "ratio_upper": 6.2, "detectable_ratio": 2.5, "growth_max": 2.0,
              "growth_floor": 1e-9, "first_bucket_exact": False, "paired": True, "units": {"compared": 2, "base": 2},
              "basis": {"compared": "exact", "base": "exact"},
              "status": status, "reason": "KLD past the first bucket grew | fivefold"}
    return {"corpus": {"path": "heldout_corpus.txt", "sha256": "ab" * 32}, "windows": 2, "window_length": 128,
            "score_from": 0, "bucket": 64, "overall": {**bucket, "start": "all", "n_positions": 256},
            "pooled": {"status": "pass", "reasons": [], "inconclusive": [], "notes": []},
            "buckets": [bucket, later], "growth": growth, "kld_is_lower_bound": False, "kld_basis": "exact",
            "verdict": {"status": status, "reasons": [f"growth: {growth['reason']}"] if status == "fail" else [],
                        "inconclusive": [], "notes": []}}


@pytest.mark.parametrize("kind, suffix, key, column, given", [
    ("corpus_compare", "corpus", "long_context", 5, "long-context comparison (compare/&lt;target&gt;.corpus.json)"),
    ("decode_compare", "decode", "decode", 6, "decode-path comparison (compare/&lt;target&gt;.decode.json)"),
])
def test_a_by_position_failure_fails_a_target_whose_seed_prompts_pass(artifacts, tmp_path, kind, suffix, key,
                                                                       column, given):
    artifacts["compare"][TARGET].write_text(json.dumps(
        {**json.loads(artifacts["compare"][TARGET].read_text()), "verdict": {"status": "pass", "checks": [],
                                                                            "reasons": [], "notes": []}}))
    path = tmp_path / "results" / "m" / "compare" / f"{TARGET}.{suffix}.json"
    for status, overall in (("pass", "✅ pass"), ("fail", "❌ fail")):
        path.write_text(json.dumps(corpus_compare_json(status)))
        text = render({**artifacts, kind: {TARGET: path}}, tmp_path)
        summary = section(text, H["summary"])
        assert f"**Overall: {overall}**" in summary
        row = next(line for line in summary.splitlines() if line.startswith(f"| {TARGET} |"))
        assert row_cells(row, column) == f"{overall} (KLD growth 5x, bounds 4.1-6.2x)"
        body = section(text, H[key])
        assert f"**Verdict: {overall}**" in body and "| 64-127 | 128 |" in body
        assert f"/compare/{TARGET}.{suffix}.json (growth)*" in body.replace("\\_", "_")
    assert "- growth: KLD past the first bucket grew \\| fivefold" in body
    assert "| growth past the first bucket (0-63) | 2 sequences, paired | 1.00e-05 | 5.00e-05 | exact " \
           "| 5x (4.1x-6.2x) | 2.5x |" in body
    # Configured but not produced: no pass.
    text = render({**artifacts, kind: {}}, tmp_path)
    assert "**Overall: ❔ unknown**" in section(text, H["summary"])
    assert f"Not run: no {given} was given" in section(text, H[key])


def test_missing_compare_is_not_run_and_never_pass(artifacts, tmp_path):
    artifacts["compare"] = {}
    artifacts["plots"] = {}
    text = render(artifacts, tmp_path)
    summary = section(text, H["summary"])
    row = next(line for line in summary.splitlines() if line.startswith(f"| {TARGET} |"))
    assert row_cells(row, 3) == "⚪ not run"
    assert "**Overall: ❔ unknown**" in summary
    table_part = summary[summary.index("| Target"):summary.index("Agreement is judged")]
    assert "pass" not in table_part.lower().replace("batch-invariant", "")
    assert "Not run: compare is not configured for this target." in section(text, H["precision"])


def test_missing_determinism_and_samples_show_not_run(artifacts, tmp_path):
    text = render(artifacts, tmp_path)
    determinism = section(text, H["determinism"])
    target_part = determinism[determinism.index(f"### {TARGET}"):]
    assert "Not run: determinism is not configured for this target." in target_part
    reference_part = determinism[: determinism.index(f"### {TARGET}")]
    assert "identical across repeats\n**100%**" in reference_part
    assert "**83.33%**" in reference_part
    assert "prompt 1 alone vs in the batch: first differs at token 4" in reference_part
    summary_row = next(line for line in text.splitlines() if line.startswith(f"| {TARGET} |"))
    assert row_cells(summary_row, 10) == "not run (determinism is not configured for this target)"


def test_determinism_left_out_by_the_config_names_the_setting(artifacts, tmp_path):
    """determinism.reference / samples.reference off: the report reads no file for them and names the setting, in the
    sections and in the summary table, not a bare "not run"."""
    artifacts["targets"][REFERENCE].update(determinism=None, samples=None)
    artifacts["turned_off_by"] = {REFERENCE: {"determinism": "determinism.reference is false",
                                              "samples": "samples.reference is false"}}
    text = render(artifacts, tmp_path)
    assert f"### {REFERENCE}\n\nNot run: determinism.reference is false." in section(text, H["determinism"])
    assert f"### {REFERENCE}\n\nNot run: samples.reference is false." in section(text, H["samples"])
    summary_row = next(line for line in text.splitlines() if line.startswith(f"| {REFERENCE} |"))
    assert row_cells(summary_row, 10) == "not run (determinism.reference is false)"


def test_absent_environment_items_say_absent(artifacts, tmp_path):
    environment = section(render(artifacts, tmp_path), H["environment"])
    rows = {row_cells(line, 0): line for line in environment.splitlines() if line.startswith("| ")}
    assert row_cells(rows["GPU"], 1) == "absent" and row_cells(rows["GPU"], 2) == "absent"
    assert row_cells(rows["vllm"], 1) == "absent"
    assert row_cells(rows["cann"], 1) == "absent"
    assert row_cells(rows["torch"], 1) == "2.13.0"
    assert row_cells(rows["RAM"], 1) == "8.00 GiB"


def test_missing_env_file_is_not_run_not_absent(artifacts, tmp_path):
    Path(artifacts["targets"][TARGET]["env"]).unlink()
    environment = section(render(artifacts, tmp_path), H["environment"])
    python_row = next(line for line in environment.splitlines() if line.startswith("| Python |"))
    assert row_cells(python_row, 2) == "not run"


def test_npu_table_is_fenced_so_backticks_cannot_close_it(artifacts, tmp_path):
    env = json.loads(Path(artifacts["targets"][TARGET]["env"]).read_text())
    env["npu"] = "| NPU 910B | OK |\n``` not a fence end"
    write_json(Path(artifacts["targets"][TARGET]["env"]), env)
    environment = section(render(artifacts, tmp_path), H["environment"])
    assert "````text\n| NPU 910B | OK |\n``` not a fence end\n````" in environment
    npu_row = next(line for line in environment.splitlines() if line.startswith("| NPU (npu-smi) |"))
    assert row_cells(npu_row, 1) == "absent" and row_cells(npu_row, 2) == "present (table below)"


def test_adaptation_statuses_and_items_an_engine_does_not_measure(artifacts, tmp_path):
    adaptation = section(render(artifacts, tmp_path), H["adaptation"])
    target_part = adaptation[adaptation.index(f"### {TARGET}"):]
    assert "| ssm\\_state\\_dtype | ⚪ not run |" in target_part
    assert "| kv\\_cache\\_tokens | ❔ not determined |" in target_part
    assert "| engine\\_class | ✅ ok | Qwen3\\_5ForCausalLM | class \\| instantiated |" in target_part
    assert "| ssm\\_state\\_dtype | ❌ failed | float32 |" in adaptation


def test_precision_section_lists_metrics_checks_and_per_prompt(artifacts, tmp_path):
    precision = section(render(artifacts, tmp_path), H["precision"])
    assert "**Verdict: ❌ fail**" in precision
    assert "| KLD mean (nats) | 1.23e-03 |" in precision
    assert "| top-1 agreement (same top token) | 94.44% |" in precision
    assert "| \\|PPL(target) / PPL(reference) − 1\\| | 2% |" in precision
    assert "| mean Δp (probability of the actual next token) | -0.02% |" in precision
    assert "| prompts failing msprobe's pass rule | 1 |" in precision
    assert "| cosine similarity of logits, min over prompts | 0.999710 |" in precision
    assert "| kld\\_p99\\_max | kld\\_p99 | 6.00e-02 | &lt;= | 5.00e-02 | ❌ fail | llama.cpp p99 |" in precision
    assert "| top1\\_agreement\\_min | top1\\_agreement\\_with\\_ties | 94.44% | &gt;= | 97% | ❌ fail |" in precision
    assert "| msprobe\\_rule | msprobe\\_failed\\_prompts | unavailable | &lt;= | 0 | ⚠ inconclusive |" in precision
    assert "- kld\\_p99\\_max: kld\\_p99 = 0.06 is not &lt;= 0.05" in precision
    assert "- Inconclusive: msprobe\\_rule: msprobe\\_failed\\_prompts is not available" in precision
    assert "within\n0.04 nats counts as a tie" in precision
    header = "| # | Prompt | Positions | KLD mean | KLD max | Top-1 agreement | Ties | RMS Δp | PPL ref | PPL target |"
    assert header + " Cosine | MaxAbsErr | MaxRelErr | msprobe | Greedy common prefix | NaN/inf positions |" in precision
    assert "| 1 | a \\| b \\|\\| c | 3 | 2.00e-03 | 4.00e-03 | 100% | 0 | 0.10% | 10 | 10.2 | 0.999900 |" in precision
    assert "| 3.00e-02 | ✅ | 8 | 0 |" in precision and "| 3.00e-02 | ❌ | 8 | 0 |" in precision
    assert "lower bound" not in precision


def test_lower_bound_note_when_kld_from_topk(artifacts, tmp_path):
    path = Path(artifacts["compare"][TARGET])
    path.write_text(json.dumps(compare_json(len(HOSTILE), lower_bound=True)))
    precision = section(render(artifacts, tmp_path), H["precision"])
    assert "KLD here is a **lower bound**" in precision


def test_model_table_separates_vocab_size_and_eos(artifacts, tmp_path):
    model = section(render(artifacts, tmp_path), H["model"])
    vocab = next(line for line in model.splitlines() if line.startswith("| vocab\\_size |"))
    assert row_cells(vocab, 1) == "248320"
    assert "differs from eos\\_token\\_id 248044" in vocab
    assert "| eos\\_token\\_id | 248044 |" in model
    assert "18× linear\\_attention + 6× full\\_attention; full attention at layers 3, 7, 11, 15, 19, 23" in model


def test_predictions_side_by_side_and_differing_tokens_marked(artifacts, tmp_path):
    predictions = section(render(artifacts, tmp_path), H["predictions"])
    header = predictions.splitlines()[4]
    assert header.count("first token") == 2 and header.count("greedy continuation") == 2
    row = next(line for line in predictions.splitlines() if line.startswith("| 0 |"))
    assert row_cells(row, 2) == "Paris"
    assert row_cells(row, 4) == "Lyon (≠ reference)"
    assert f"{TARGET}: 0/6 first tokens equal the reference's (0%)" in predictions


def test_samples_split_english_and_chinese(artifacts, tmp_path):
    samples = section(render(artifacts, tmp_path), H["samples"])
    english = samples[samples.index("English prompts:"): samples.index("Chinese (CJK) prompts:")]
    chinese = samples[samples.index("Chinese (CJK) prompts:"):]
    assert "法国的首都是" in chinese and "法国的首都是" not in english
    assert "The capital of France is" in english and "The capital of France is" not in chinese
    assert "| 5 | 法国的首都是 | sample 5 \\| with↵newline | 20 |" in chinese
    assert "Not run: samples is not configured for this target." in samples


def test_theory_is_labelled_and_beside_measurements(artifacts, tmp_path):
    theory = section(render(artifacts, tmp_path), H["theory"])
    assert "> **Theory (not a measurement).**" in theory
    assert "2^-8 ≈ 3.9e-3 (0.39%)" in theory
    assert f"| {TARGET} | bf16 | 3.10e-02 | 41% | 1.23e-03 | 94.44% |" in theory


def seed_bench() -> dict:
    """The seed report's benchmark figures as a bench.json (they contradict each other)."""
    from portcheck.benchmarks import statistics as perf

    rows = perf.add_scaling([perf.throughput_row(1, 8, 20, 0.750), perf.throughput_row(8, 8, 20, 0.896)])
    return {"plan": {"input_len": 8}, "percentiles": [50], "throughput": [{"title": "sweep", "rows": rows}],
            "latency": {"batch_size": 8, "input_len": 8, "output_len": 20, "ttft_s": {"p50": 0.178},
                        "tpot_s": {"p50": 0.0062}},
            "prefill": {"prompts": 2, "input_len": 8, "latency_s": {"p50": 0.1779}}}


def add_bench(artifacts, tmp_path, checks: bool = True) -> None:
    """The target's bench.json, and its bench_checks.json as rule check_benchmarks writes it (no hardware)."""
    paths = artifacts["targets"][TARGET]
    paths["bench"] = write_json(tmp_path / "results" / "m" / TARGET / "bench.json", seed_bench())
    paths["bench_checks"] = tmp_path / "results" / "m" / TARGET / "bench_checks.json"
    if checks:
        write_json(paths["bench_checks"], check_benchmarks(seed_bench(), None, None, 0.25))


def test_performance_not_run_with_reason_and_slots_in_when_present(artifacts, tmp_path):
    text = render(artifacts, tmp_path)
    performance = section(text, H["performance"])
    assert "Offline benchmarks: not run — no bench.json was given to the report" in performance
    add_bench(artifacts, tmp_path)
    artifacts["targets"][TARGET]["serve"] = tmp_path / "missing-serve.json"
    performance = section(render(artifacts, tmp_path), H["performance"])
    assert "| 8 | 20 | 0.896 | 160 | 178.6 |" in performance  # the seed's batch-8 row
    assert "| Decode latency per step (8 prompts, TPOT p50) | 6.20 |" in performance
    assert "Serving check: not run — the serving check starts vllm serve: vllm targets only" in performance
    assert "❌ does not fit" in performance  # the seed's figures contradict each other
    assert "(tolerance 25%, `bench.consistency_tolerance`)" in performance  # read from bench_checks.json
    roofline = next(line for line in performance.splitlines() if line.startswith(f"| {TARGET} | peak unknown"))
    assert "(no hardware configured for this cpu target)" in roofline and row_cells(roofline, 10) == "2 x 8 tokens"


def test_missing_bench_checks_shows_not_run_in_the_roofline(artifacts, tmp_path):
    add_bench(artifacts, tmp_path, checks=False)
    performance = section(render(artifacts, tmp_path), H["performance"])
    assert "| 8 | 20 | 0.896 | 160 | 178.6 |" in performance  # the benchmarks themselves are shown
    roofline = section(performance, "### Roofline")
    assert f"| {TARGET} | not run | — |" in roofline and f"| {REFERENCE} | not run | — |" in roofline
    consistency = section(performance, "### Consistency of the figures")
    assert "(tolerance unknown, `bench.consistency_tolerance`)" in consistency
    assert "0 check(s) do not fit" in consistency and "❌" not in consistency


def test_plot_links_resolve_next_to_report(artifacts, tmp_path):
    text = render(artifacts, tmp_path)
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", section(text, H["plots"]))
    assert links == ["kld_per_position.png", "kld_distribution.png"]
    for link in links:
        assert (tmp_path / "reports" / "m" / link).is_file()


def test_missing_plot_is_not_linked(artifacts, tmp_path):
    (tmp_path / "reports" / "m" / "kld_distribution.png").unlink()
    plots_section = section(render(artifacts, tmp_path), H["plots"])
    assert "kld_distribution.png)" not in plots_section
    assert "- Distribution of per-position KLD: not run (kld\\_distribution.png absent)" in plots_section


def test_artifacts_list_hashes_versions_and_command(artifacts, tmp_path):
    from portcheck.hashing import sha256_file

    artifacts["configfile"] = "config/npu.yaml"
    listing = section(render(artifacts, tmp_path), H["artifacts"])
    dump = artifacts["targets"][TARGET]["logits"]
    row = next(line for line in listing.splitlines() if line.startswith(f"| {cell(str(dump))} |"))
    assert row_cells(row, 3) == sha256_file(dump)[:16]
    assert row_cells(row, 4) == "torch 2.13.0, transformers 5.19.0"
    assert listing.count("| determinism |") == 1  # the target without one lists none
    assert "snakemake --cores 1 --configfile config/npu.yaml report" in listing
    assert "workflow commit abc123" in listing


def full_report(artifacts, tmp_path) -> str:
    """A report with every kind of table: benchmarks, their checks and a run history."""
    add_bench(artifacts, tmp_path)
    out = tmp_path / "reports" / "m" / "report.md"
    context = build_context(artifacts, CONFIG)
    context["history"] = history.record_and_section(tmp_path / "results" / "m" / "history.jsonl", artifacts,
                                                    CONFIG["history"])
    render_report(TEMPLATE, out, context)
    return out.read_text(encoding="utf-8")


def test_every_table_ends_with_a_source_line(artifacts, tmp_path):
    lines = full_report(artifacts, tmp_path).splitlines()
    table_ends = [i for i, line in enumerate(lines[:-1]) if line.startswith("|") and not lines[i + 1].startswith("|")]
    assert len(table_ends) >= 25
    for end in table_ends:
        assert lines[end + 1] == "" and lines[end + 2].startswith("*Source: "), lines[end - 1: end + 3]
        assert lines[end + 2].endswith("*")
    sources = [line for line in lines if line.startswith("*Source: ")]
    assert len(sources) == len(table_ends)
    checks_file = f"{cell(str(tmp_path))}/results/m/&lt;target&gt;/bench\\_checks.json"
    roofline = next(line for line in sources if line.startswith(f"*Source: {checks_file} (hardware, roofline);"))
    assert "the peaks are theory: config hardware.&lt;name&gt;" in roofline
    assert f"*Source: {checks_file} (consistency, tolerance)*" in sources
    assert any(line.startswith("*Source: theory, not a measurement") for line in sources)  # the bf16 facts


def test_every_anchor_link_resolves_to_a_heading(artifacts, tmp_path):
    text = full_report(artifacts, tmp_path)
    links = re.findall(r"\]\((#[^)]*)\)", text)
    assert links == [H["artifacts"].replace("## ", "#").replace(". ", "-").lower(), "#6-precision-comparison",
                     "#7-long-context-precision", "#8-decode-path-precision", "#9-engine-modes",
                     "#18-vision-tower", "#6-precision-comparison"]
    headings = {anchor(line.lstrip("#").strip()) for line in text.splitlines() if line.startswith("#")}
    assert set(links) <= headings


def test_section_headings_come_from_the_one_list(artifacts, tmp_path):
    text = full_report(artifacts, tmp_path)
    rendered = [line for line in text.splitlines() if line.startswith("## ")]
    assert rendered == [f"## {n}. {title}" for n, (_, title) in enumerate(SECTIONS, start=1)]
    assert rendered[:-1] == HEADINGS
    headings = section_headings()
    assert headings["artifacts"]["anchor"] == "#20-artifacts" and headings["history"]["heading"] == "21. History"
    assert anchor("9. bf16 vs fp32: Theory (not a measurement)") == "#9-bf16-vs-fp32-theory-not-a-measurement"


def test_a_file_that_is_not_a_portcheck_dump_is_an_error_naming_it(artifacts):
    dump = Path(artifacts["targets"][TARGET]["logits"])
    save_file({"x": np.zeros(1, dtype=np.float32)}, str(dump), metadata={"format": "other"})
    with pytest.raises(PortcheckError, match="not a portcheck logit dump"):
        build_context(artifacts, CONFIG)


def test_render_is_byte_identical_on_rerun(artifacts, tmp_path):
    assert render(artifacts, tmp_path) == render(artifacts, tmp_path)


def test_compare_without_verdict_is_unknown_not_pass(artifacts):
    data = compare_json(len(HOSTILE))
    del data["verdict"]
    write_json(Path(artifacts["compare"][TARGET]), data)
    context = build_context(artifacts, CONFIG)
    assert context["summary"]["table"]["rows"][1][3] == "❔ unknown: no verdict for seed prompts"
    assert context["summary"]["overall"]["status"] == "unknown"
    assert context["precision"][0]["verdict"] == "❔ unknown"


def test_all_targets_passing_gives_overall_pass(artifacts):
    write_json(Path(artifacts["compare"][TARGET]), compare_json(len(HOSTILE), status="pass"))
    assert build_context(artifacts, CONFIG)["summary"]["overall"]["status"] == "pass"


def test_missing_reference_is_an_error_naming_it(artifacts):
    del artifacts["targets"][REFERENCE]
    with pytest.raises(PortcheckError, match="reference target 'cpu-hf-fp32' has no artifacts"):
        build_context(artifacts, CONFIG)


def test_context_is_plain_data(artifacts):
    context = build_context(artifacts, CONFIG)
    assert context["title"] == "m port check"
    assert context["summary"]["overall"]["status"] == "fail"
    json.dumps(context)  # tables are lists of strings: nothing the template could misformat


# ---------------------------------------------------------------- plots


def test_plots_are_deterministic_without_software_tag(tmp_path):
    compare = {TARGET: write_json(tmp_path / "c.json", compare_json(3))}
    first, second = tmp_path / "a.png", tmp_path / "b.png"
    plots.plot_kld_per_position(compare, first)
    plots.plot_kld_per_position(compare, second)
    assert first.read_bytes() == second.read_bytes()
    assert first.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"matplotlib" not in first.read_bytes()
    assert not list(tmp_path.glob(".*.tmp"))


def test_kld_frame_lays_prompts_end_to_end_and_keeps_zeros_and_gaps(tmp_path):
    compare = {TARGET: write_json(tmp_path / "c.json", compare_json(2))}
    frame = plots.kld_frame(compare)
    assert list(frame["x"]) == [0, 1, 2, 3, 4, 5]
    assert list(frame["prompt"]) == [0, 0, 0, 1, 1, 1]
    assert frame["kld"].iloc[0] == 0.0
    assert frame["kld"].isna().tolist() == [False, False, True, False, False, False]


def test_plots_without_data_still_write_a_png(tmp_path):
    compare = {TARGET: write_json(tmp_path / "c.json", {"per_prompt": [{"index": 0, "kld": [None, None]}]})}
    plots.plot_kld_distribution(compare, tmp_path / "d.png")
    plots.plot_kld_per_position({}, tmp_path / "p.png")
    assert (tmp_path / "d.png").stat().st_size > 0 and (tmp_path / "p.png").stat().st_size > 0


def test_log_floor_only_when_values_span_a_decade():
    import pandas as pd

    assert plots.log_floor(pd.Series([0.0, 1e-5, 1e-2])) == pytest.approx(1e-6)
    assert plots.log_floor(pd.Series([0.0, 0.0])) is None
    assert plots.log_floor(pd.Series([1.0, 2.0])) is None


def test_nan_in_target_marks_does_it_run(artifacts):
    data = compare_json(len(HOSTILE))
    data["nonfinite"] = [{"prompt": 1, "row": 0, "side": "target"}, {"prompt": 1, "row": 1, "side": "target"},
                         {"prompt": 2, "row": 0, "side": "reference"}]
    data["nonfinite_count"] = 3
    write_json(Path(artifacts["compare"][TARGET]), data)
    context = build_context(artifacts, CONFIG)
    assert context["summary"]["table"]["rows"][1][2] == "❌ NaN/inf at 2 positions"


# ---------------------------------------------------------------- with the real dump writer and comparer


def test_report_from_real_dumps_and_comparison(artifacts, tmp_path):
    """The same report built from files written by logits_file.write_dump and compare_files, so a change
    in their shapes shows up here."""
    import yaml

    from portcheck.compare.compare import compare_files
    from portcheck.dump.logits_file import write_dump as write_real_dump
    from portcheck.engines.outputs import Generation, PromptScores

    rng = np.random.default_rng(0)
    thresholds = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["compare"]["thresholds"]
    base = [rng.standard_normal((4, 16)).astype(np.float32) for _ in HOSTILE]
    for name, noise in ((REFERENCE, 0.0), (TARGET, 0.01)):
        scores = [PromptScores(input_ids=np.arange(4, dtype=np.int64) + i,
                               logits=logits + noise * rng.standard_normal(logits.shape).astype(np.float32))
                  for i, logits in enumerate(base)]
        meta = {"target": name, "model_sha": "m" * 64, "tokenizer_sha": "t" * 64, "prompts_sha": "p" * 64,
                "prompts": HOSTILE, "greedy_text": ["x"] * len(HOSTILE), "greedy_tokens": [["x"]] * len(HOSTILE),
                "versions": {"torch": "2.13.0"}, "settings": {"seed": 0}, "gdn_impl": None}
        write_real_dump(artifacts["targets"][name]["logits"], scores, [Generation([1, 2])] * len(HOSTILE), meta)
    result = compare_files(artifacts["targets"][REFERENCE]["logits"], artifacts["targets"][TARGET]["logits"],
                                   thresholds, 0.04)
    write_json(Path(artifacts["compare"][TARGET]), result)
    text = render(artifacts, tmp_path)
    summary_row = next(line for line in text.splitlines() if line.startswith(f"| {TARGET} |"))
    assert row_cells(summary_row, 3).split(":")[0] == VERDICT_WORDS[result["verdict"]["status"]]
    assert row_cells(summary_row, 4) == sci(result["kld_mean"])
    precision = section(text, H["precision"])
    assert f"| KLD mean (nats) | {sci(result['kld_mean'])} |" in precision
    inconclusive = [c for c in result["verdict"]["checks"] if c["status"] == "inconclusive"]
    assert precision.count("⚠ inconclusive |") == len(inconclusive)
    for block in table_blocks(text):
        assert len({unescaped_pipes(line) for line in block}) == 1


VERDICT_WORDS = {"pass": "✅ pass", "fail": "❌ fail"}


def test_three_way_judges_a_candidate_against_a_benchmark_port(artifacts, tmp_path):
    # Two CPU targets stand in for the NPU and the GPU port.
    assert "Not run: it needs an npu and a gpu target" in section(render(artifacts, tmp_path), H["three_way"])
    benchmark = "cpu-vllm-bf16"
    compare = json.loads(artifacts["compare"][TARGET].read_text())
    path = tmp_path / "results" / "m" / "compare" / f"{benchmark}.json"
    path.write_text(json.dumps({**compare, "kld_mean": compare["kld_mean"] / 3, "kld_p99": compare["kld_p99"] / 1.5,
                                "rms_delta_p": compare["rms_delta_p"], "max_rel_err": compare["max_rel_err"] / 5}))
    artifacts["targets"][benchmark] = dict(artifacts["targets"][TARGET])
    artifacts["compare"][benchmark] = path
    config = json.loads(json.dumps(CONFIG))
    config["compare"]["three_way"] = {"candidate": TARGET, "benchmark": benchmark}
    text = render(artifacts, tmp_path, config)
    three_way = section(text, H["three_way"])
    rows = {line.split("|")[1].strip(): line for line in three_way.splitlines() if line.startswith("| ")}
    assert row_cells(rows["KLD mean, seed prompts"], 3) == "3" and "❌ error" in rows["KLD mean, seed prompts"]
    assert row_cells(rows["KLD p99, seed prompts"], 3) == "1.5" and "⚠️ warning" in rows["KLD p99, seed prompts"]
    assert row_cells(rows["RMS Δp, seed prompts"], 3) == "1" and "✅ pass" in rows["RMS Δp, seed prompts"]
    assert "⚠️ warning" in rows["MaxRelativeErr of logits"]  # 5x: an error for a mean, a warning for a max
    assert "unknown (not measured on both)" in rows["KLD mean, long context"]
    assert f"compare/{benchmark}.json (kld_mean, kld_basis)" in three_way.replace("\\_", "_")


def test_layers_section_names_the_first_divergent_layer(artifacts, tmp_path):
    assert "Not run: `layers.enabled` is false" in section(render(artifacts, tmp_path), H["layers"])
    rows = [{"index": i, "name": f"layer {i}", "type": "Gated DeltaNet", "cosine_min": 1.0 if i < 1 else 0.95,
             "rel_l2_mean": 0.0 if i < 1 else 0.08, "rel_l2_max": 0.1, "max_abs_err": 0.5,
             "added_rel_l2": 0.0 if i < 1 else 0.08 / i, "over": i >= 1} for i in range(2)]
    comparison = {"status": "diverges", "layers": rows, "finding": "first over the thresholds: layer 1 (Gated DeltaNet)",
                  "thresholds": {"cosine_min": 0.99, "rel_l2_max": 0.05}, "sequences": 3, "positions": 20}
    path = tmp_path / "results" / "m" / "compare" / f"{TARGET}.layers.json"
    path.write_text(json.dumps(comparison))
    layers = section(render({**artifacts, "layers_compare": {TARGET: path}}, tmp_path), H["layers"])
    assert "**first over the thresholds: layer 1 (Gated DeltaNet)**" in layers
    assert "| layer 1 | Gated DeltaNet | 0.95 | 8% | 10% | 5.00e-01 | 8% | ❌ yes |" in layers
    assert f"compare/{TARGET}.layers.json (layers, first\\_divergent" in layers
    not_run = {"status": "not run", "reason": "cpu-hf-bf16: the engine does not capture them"}
    path.write_text(json.dumps(not_run))
    layers = section(render({**artifacts, "layers_compare": {TARGET: path}}, tmp_path), H["layers"])
    assert "Not run: cpu-hf-bf16: the engine does not capture them." in layers


def test_an_inconclusive_target_shows_why_in_the_summary_and_never_agrees(artifacts, tmp_path):
    """A top-k target whose KLD lower bound is under its threshold: inconclusive, the reason in the summary's own
    cell, and the overall line does not say every target agrees."""
    data = json.loads(artifacts["compare"][TARGET].read_text())
    data["kld_basis"], data["kld_is_lower_bound"] = "lower bound", True
    data["verdict"] = {"status": "inconclusive", "checks": [], "reasons": [], "notes": [],
                       "inconclusive": ["kld_mean_max: kld_mean = 0.001 is a lower bound (top-k) under 0.005"]}
    artifacts["compare"][TARGET].write_text(json.dumps(data))
    summary = section(render(artifacts, tmp_path), H["summary"])
    row = next(line for line in summary.splitlines() if line.startswith(f"| {TARGET} |"))
    assert row_cells(row, 3).startswith("⚠ inconclusive: seed prompts (seed prompts: kld\\_mean\\_max: kld\\_mean")
    assert "**Overall: ⚠ inconclusive**" in summary and "every compared target" not in summary


def test_three_way_on_different_kld_bases_is_inconclusive_naming_both(artifacts, tmp_path):
    """An exact-KLD GPU benchmark against a lower-bound NPU candidate would bias the ratio towards a pass."""
    benchmark = "cpu-vllm-bf16"
    compare = json.loads(artifacts["compare"][TARGET].read_text())
    artifacts["compare"][TARGET].write_text(json.dumps({**compare, "kld_basis": "lower bound"}))
    path = tmp_path / "results" / "m" / "compare" / f"{benchmark}.json"
    path.write_text(json.dumps({**compare, "kld_basis": "exact", "kld_mean": compare["kld_mean"] * 3}))
    artifacts["targets"][benchmark] = dict(artifacts["targets"][TARGET])
    artifacts["compare"][benchmark] = path
    config = json.loads(json.dumps(CONFIG))
    config["compare"]["three_way"] = {"candidate": TARGET, "benchmark": benchmark}
    three_way = section(render(artifacts, tmp_path, config), H["three_way"])
    row = next(line for line in three_way.splitlines() if line.startswith("| KLD mean, seed prompts"))
    assert "(lower bound)" in row and "(exact)" in row and row_cells(row, 3) == "—"
    assert "⚠ inconclusive (KLD bases differ: lower bound vs exact" in row
    rms = next(line for line in three_way.splitlines() if line.startswith("| RMS Δp, seed prompts"))
    assert "✅ pass" in rms  # no KLD basis: compared as before


def test_what_a_pass_is_worth_comes_from_the_calibration_record_or_says_unknown(monkeypatch):
    from portcheck.report.sections import power

    record = {"date": "2026-12-03", "model": "tiny", "target": "cpu-vllm-bf16", "reference": "cpu-hf-fp32",
              "detection": [
                  {"fault": "layer_scale:0.1", "what": "one layer off", "caught_by": [], "caught": False,
                   "should_be_caught": True, "floor_multiple": {"corpus": 4.2, "decode": None, "chunked": 4.21,
                                                                "batch": 1.8}},
                  {"fault": "state_decay:1", "what": "state decayed", "caught_by": [], "caught": False,
                   "inconclusive_on": ["chunked vs floor"], "should_be_caught": False,
                   "floor_multiple": {"chunked": 2.6}},
                  {"fault": "state_dropped:99", "what": "state ignored", "caught_by": ["chunked", "chunked growth"],
                   "caught": True, "should_be_caught": True, "floor_multiple": {"corpus": 0.9}}],
              "false_failures": {"corpus": {"runs": 10, "failed": 1, "inconclusive": 2}}}
    monkeypatch.setattr(power, "shipped_record", lambda *_: (record, "src/portcheck/faults/data/detection.json"))
    section = power.power_section()
    rows = section["faults"]["rows"]
    assert rows[0] == ["`layer_scale:0.1`", "one layer off", "4.2×", "—", "4.2×", "1.8×", "not caught"]
    assert rows[1][-1] == "not caught (inconclusive: chunked vs floor)"
    assert rows[2][-1] == "chunked, chunked growth" and rows[2][3] == "—"
    assert section["clean"]["rows"] == [["corpus", "1 of 10", "2"]]
    assert section["missed"] == ["layer_scale:0.1"]
    assert "make calibrate, 2026-12-03" in section["faults"]["source"]
    assert section["host"] is None
    record["host"] = {"cpu": "Xeon X", "float_kernel_flags": ["amx_bf16", "avx512f"], "torch": "2.9.0", "vllm": None}
    assert power.power_section()["host"] == "Xeon X (amx_bf16, avx512f), torch 2.9.0, vllm unknown"
    record["host"]["float_kernel_flags"] = []
    assert power.power_section()["host"].startswith("Xeon X (none of the AVX2/AVX-512/AMX flags)")
    monkeypatch.setattr(power, "shipped_record", lambda *_: ({}, ""))
    assert power.power_section() == {"available": False}


def accuracy_compare_json(status: str, in_verdict: bool) -> dict:
    """The shape accuracy/compare.py writes."""
    task = {"metric": "acc", "n": 24, "reference_score": 0.5, "score": 0.25 if status == "fail" else 0.5,
            "same_answer": 0.75, "lost": 6, "gained": 0 if status == "fail" else 6,
            "mcnemar_p": 0.03125 if status == "fail" else 1.0, "significantly_worse": status == "fail",
            "mcnemar_could_fail": True, "within_rtol": status != "fail", "status": status,
            "reference_stderr": 0.1, "stderr": 0.09}
    return {"reference": REFERENCE, "target": TARGET, "rtol": 0.05, "alpha": 0.05, "in_verdict": in_verdict,
            "tasks": {"portcheck_mc": task}, "verdict": {"status": status}}


@pytest.mark.parametrize("in_verdict", [False, True])
def test_task_accuracy_is_shown_and_enters_the_verdict_only_where_configured(artifacts, tmp_path, in_verdict):
    artifacts["compare"][TARGET].write_text(json.dumps(
        {**json.loads(artifacts["compare"][TARGET].read_text()), "verdict": {"status": "pass", "checks": [],
                                                                            "reasons": [], "notes": []}}))
    path = tmp_path / "results" / "m" / "compare" / f"{TARGET}.accuracy.json"
    path.write_text(json.dumps(accuracy_compare_json("fail", in_verdict)))
    text = render({**artifacts, "accuracy_compare": {TARGET: path}}, tmp_path)
    body = section(text, H["accuracy"])
    assert f"| {TARGET} | portcheck\\_mc | acc | 24 | 0.5 | 0.25 | 75% | 6 / 0 | 0.03125 | ❌ no | ❌ fail |" in body
    assert "/compare/&lt;target&gt;.accuracy.json (tasks.\\*)" in body
    summary = section(text, H["summary"])
    assert ("**Overall: ❌ fail**" in summary) == in_verdict
    assert ("task accuracy fail" in summary) == in_verdict
    # Enabled but not produced: said so, never a pass.
    text = render({**artifacts, "accuracy_compare": {}}, tmp_path)
    assert "Not run: " in section(text, H["accuracy"]) and "task-accuracy comparison" in section(text, H["accuracy"])


def test_a_target_left_out_of_the_accuracy_stage_is_named_with_its_setting_not_as_the_stage_off(artifacts, tmp_path):
    """The bf16 floor without accuracy.floor, here the only compared target: the section names the setting; only
    accuracy.enabled false says the stage is off."""
    left_out = {**artifacts, "accuracy_compare": {TARGET: None},
                "turned_off_by": {TARGET: {"accuracy_compare": "accuracy.floor is false"}}}
    body = section(render(left_out, tmp_path), H["accuracy"])
    assert f"- Not run: {TARGET}: accuracy.floor is false" in body and "`accuracy.enabled` is false" not in body
    off = {**CONFIG, "accuracy": {**CONFIG["accuracy"], "enabled": False}}
    body = section(render({**artifacts, "accuracy_compare": None}, tmp_path, off), H["accuracy"])
    assert "Not run: `accuracy.enabled` is false." in body and "accuracy.floor" not in body


def test_the_serving_sweep_plot_orders_levels_by_load_and_marks_saturation(tmp_path):
    def level(name, rate, throughput, ttft):
        return {"name": name, "request_throughput": rate, "output_throughput": throughput, "median_ttft_ms": ttft,
                "p99_ttft_ms": ttft * 2}

    serve = {"levels": [level("synchronous", 1.0, 16.0, 20.0), level("throughput", 9.0, 100.0, 400.0),
                        level("rate 3/s", 3.0, 48.0, 25.0), {"name": "rate 6/s", "error": "timed out"},
                        level("rate 7/s", 6.5, 98.0, 90.0)],
             "sweep": {"saturation": {"reached": True, "level": "throughput"}}}
    path = write_json(tmp_path / "serve.json", serve)
    frame = plots.serve_frame({TARGET: path})
    assert list(frame["level"]) == ["synchronous", "rate 3/s", "rate 7/s", "throughput"]  # the failed level left out
    assert list(frame["saturation"]) == [False, False, False, True]
    plots.plot_serve_sweep({TARGET: path}, tmp_path / "serve_sweep.png")
    plots.plot_serve_sweep({}, tmp_path / "empty.png")
    assert (tmp_path / "serve_sweep.png").stat().st_size > 10_000 and (tmp_path / "empty.png").is_file()


@pytest.mark.parametrize(("batches", "text"), [([8], "as one batch of 8"), ([1, 1, 1], "each prompt alone"),
                                               ([4, 4], "in batches of 4, 4"), (None, "not recorded")])
def test_the_decode_section_says_how_each_target_decoded_its_prompts(batches, text):
    from portcheck.report.sections.positions import decode_batches_text

    assert decode_batches_text(batches) == text


def test_the_bucket_tables_floor_column_is_the_floor_on_the_same_tokens_where_the_check_kept_it():
    """The decode table's "× bf16 floor" divides each bucket by the floor's KLD on the target's own decoded tokens
    (the vs-floor check's buckets, paired), not by the floor target's own decode, which follows other tokens; an
    artifact from before (a check without buckets) falls back to the floor target's own and says it is unpaired."""
    from portcheck.report.load import TargetData
    from portcheck.report.sections.positions import decode_section

    def comparison(klds, vs_floor=None):
        buckets = [{"start": s, "end": s + 16, "n_positions": 24, "kld_mean": k, "status": "pass"}
                   for s, k in zip((0, 16), klds)]
        return {"buckets": buckets, "overall": {"kld_mean": sum(klds) / 2}, "pooled": {"status": "pass"},
                "growth": {}, "verdict": {"status": "pass"}, "decode": {"sequences": 3, "steps": 32},
                **({"vs_floor": vs_floor} if vs_floor else {})}

    paired = {"status": "pass", "ratio": 2.0, "kld_floor": 3e-4, "kld_target": 6e-4,
              "buckets": [{"start": 0, "end": 16, "kld_mean": 2e-4}, {"start": 16, "end": 32, "kld_mean": 4e-4}]}
    floor = TargetData("cpu-hf-bf16", "target", decode_compare=comparison([1e-3, 1e-3]),
                       paths={"decode_compare": "compare/cpu-hf-bf16.decode.json"})

    def floor_column(check):
        target = TargetData("cpu-vllm-bf16", "target", decode_compare=comparison([4e-4, 8e-4], check),
                            paths={"decode_compare": "compare/cpu-vllm-bf16.decode.json"})
        buckets = decode_section([target, floor])["targets"][0]["buckets"]
        return [row[buckets["header"].index("× bf16 floor")] for row in buckets["rows"]], buckets["source"]

    column, source = floor_column(paired)
    assert column == ["2.00", "2.00", "2.00"]  # 4e-4 / 2e-4, 8e-4 / 4e-4, 6e-4 / 3e-4
    assert "compare/cpu-vllm-bf16.decode.json (vs_floor.buckets, vs_floor.kld_floor)" in source
    column, source = floor_column({key: value for key, value in paired.items() if key != "buckets"})
    assert column == ["0.40", "0.80", "0.60"]
    assert "compare/cpu-hf-bf16.decode.json (buckets.kld_mean, overall.kld_mean) (its own decode" in source
