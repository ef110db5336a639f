"""The run history: appended per report run, deduplicated for re-renders, compared with tolerances, set aside
(renamed, not deleted) when corrupted, and rendered in the report."""

from __future__ import annotations

import json

import pytest
import yaml

from conftest import ROOT
from portcheck.config import load_schema, validate_config
from portcheck.report import history
from portcheck.report.render import section_headings

HISTORY_HEADING = "## " + section_headings()["history"]["heading"]

# The schema's defaults, as a validated config carries them.
TOLERANCES = validate_config(yaml.safe_load((ROOT / "config" / "config.yaml").read_text()),
                             load_schema(ROOT / "config" / "schema.yaml"), base_dir=ROOT)["history"]["tolerances"]


def record(kld=1e-4, tpot=0.050, vllm_ascend="0.18.0", verdict="pass", when="2026-01-01T00:00:00+00:00"):
    return {"schema": 1, "recorded_at": when, "model": "m", "reference": "cpu-hf-fp32", "targets": {
        "cpu-hf-fp32": {"verdict": "reference", "versions": {"torch": "2.9"}},
        "npu-vllm-bf16": {"verdict": verdict, "kld_mean": kld, "kld_p99": 1e-3, "top1_agreement": 0.99,
                          "throughput_tok_s": 100.0, "ttft_s": 0.2, "tpot_s": tpot,
                          "versions": {"torch": "2.9", "vllm_ascend": vllm_ascend}}}}


def test_upgrade_finding_names_versions_and_changes():
    found = history.findings(record(), record(tpot=0.044, vllm_ascend="0.23.0"), TOLERANCES)
    assert len(found) == 1
    text = found[0]["text"]
    assert text.startswith("npu-vllm-bf16: after upgrading vllm_ascend 0.18.0 -> 0.23.0:")
    assert "TPOT -12%" in text and "KLD unchanged" in text
    assert not found[0]["regression"]  # faster is not a regression


def test_regressions_beyond_tolerance_are_flagged_and_within_are_not():
    worse = history.findings(record(), record(kld=2e-4, tpot=0.0515), TOLERANCES)[0]
    assert worse["regression"] and worse["regressions"] == ["KLD +100%"]  # TPOT +3% is within 5%
    failed = history.findings(record(), record(verdict="fail"), TOLERANCES)[0]
    assert failed["regression"] and "verdict pass -> fail" in failed["regressions"]
    loose = history.findings(record(), record(kld=2e-4), {**TOLERANCES, "kld_mean": 2.0})[0]
    assert not loose["regression"]


def test_append_adds_runs_and_skips_an_identical_rerender(tmp_path):
    path = tmp_path / "history.jsonl"
    records, problem = history.append(path, record())
    assert problem is None and len(records) == 1
    records, _ = history.append(path, record(when="2026-01-02T00:00:00+00:00"))  # same figures: a re-render
    assert len(records) == 1 and len(path.read_text().splitlines()) == 1
    records, _ = history.append(path, record(tpot=0.06))
    assert len(records) == 2
    assert [json.loads(line)["targets"]["npu-vllm-bf16"]["tpot_s"] for line in path.read_text().splitlines()] \
        == [0.05, 0.06]


@pytest.mark.parametrize("garbage", ["{not json\n", "[1, 2]\n", "\x00\xff\n"])
def test_corrupted_history_is_set_aside_and_reported(tmp_path, garbage):
    path = tmp_path / "history.jsonl"
    path.write_text(json.dumps(record()) + "\n" + garbage, encoding="utf-8", errors="surrogateescape")
    original = path.read_bytes()
    records, problem = history.append(path, record(tpot=0.06))
    assert len(records) == 1 and "corrupted" in problem and "set aside as" in problem
    aside = list(tmp_path.glob("history.jsonl.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == original  # kept, byte for byte
    assert len(path.read_text().splitlines()) == 1  # a new history started with this run


def test_section_and_report_render_history(tmp_path):
    from conftest import ROOT
    from portcheck.report.render import render_report

    records = [record(), record(tpot=0.044, vllm_ascend="0.23.0")]
    section = history.section(records, TOLERANCES, show_runs=5, problem="the history file was "
                              "corrupted (x); it was set aside as h.corrupt and a new history started")
    section["path"] = "results/m/history.jsonl"
    assert section["table"]["header"][2:] == ["run 1 (2026-01-01T00:00:00+00:00)", "run 2 (2026-01-01T00:00:00+00:00)"]
    tpot = next(r for r in section["table"]["rows"] if r[:2] == ["npu-vllm-bf16", "TPOT"])
    assert tpot[2:] == ["50.0 ms", "44.0 ms"]
    # Render only the History section through the real template's filters.
    template = tmp_path / "t.md.j2"
    source = (ROOT / "reports" / "templates" / "report.md.j2").read_text()
    template.write_text(source[source.index("{% if history %}"):])
    render_report(template, tmp_path / "r.md", {"history": section, "plots": []})
    text = (tmp_path / "r.md").read_text()
    assert HISTORY_HEADING in text and "vllm\\_ascend 0.18.0 -&gt; 0.23.0" in text
    assert "set aside as h.corrupt" in text


def test_build_record_reads_compare_and_bench(tmp_path):
    (tmp_path / "t").mkdir()
    (tmp_path / "c.json").write_text(json.dumps({"verdict": {"status": "pass"}, "kld_mean": 1e-5,
                                                 "kld_p99": 1e-4, "top1_agreement": 1.0}))
    (tmp_path / "t" / "bench.json").write_text(json.dumps({
        "throughput": [{"rows": [{"batch_size": 1, "max_tokens": 4, "output_tok_s": 12.5},
                                 {"batch_size": 1, "max_tokens": 8, "output_tok_s": 14.0},
                                 {"batch_size": 8, "max_tokens": 8, "output_tok_s": 80.0}]}],
        "latency": {"ttft_s": {"p50": 0.1}, "tpot_s": {"p50": 0.02}}}))
    (tmp_path / "t" / "env.json").write_text(json.dumps({"versions": {"torch": "2.13.0", "vllm": "0.32.0"}}))
    artifacts = {"model": "m", "reference": "cpu-hf-fp32", "compare": {"cpu-hf-bf16": str(tmp_path / "c.json")},
                 "targets": {"cpu-hf-bf16": {"logits": str(tmp_path / "t" / "logits.safetensors"),
                                             "bench": str(tmp_path / "t" / "bench.json"),
                                             "env": str(tmp_path / "t" / "env.json")},
                             "cpu-hf-fp32": {"logits": str(tmp_path / "absent" / "logits.safetensors"),
                                             "bench": str(tmp_path / "absent" / "bench.json")}}}
    rec = history.build_record(artifacts, {"throughput_point": {"batch_size": 1, "max_tokens": None}})
    t = rec["targets"]["cpu-hf-bf16"]
    assert (t["verdict"], t["kld_mean"], t["throughput_tok_s"], t["throughput_point"]) == \
        ("pass", 1e-5, 14.0, "batch 1 x 8 tokens")
    assert (t["ttft_s"], t["tpot_s"]) == (0.1, 0.02)
    assert "vllm" not in t["versions"]  # an hf target's fingerprint leaves vllm out
    ref = rec["targets"]["cpu-hf-fp32"]
    assert ref["verdict"] == "reference" and ref["throughput_tok_s"] is None  # no bench.json: null, not an error


def test_a_reference_not_benchmarked_reads_not_run_with_the_setting(tmp_path):
    (tmp_path / "bench.json").write_text(json.dumps({
        "throughput": [{"rows": [{"batch_size": 1, "max_tokens": 4, "output_tok_s": 12.5},
                                 {"batch_size": 1, "max_tokens": 8, "skipped": {"reason": "over the budget"}}]}],
        "latency": {"ttft_s": {"p50": 0.1}, "tpot_s": {"p50": 0.02}}}))
    artifacts = {"model": "m", "reference": "cpu-hf-fp32", "compare": {},
                 "targets": {"cpu-hf-fp32": {"bench": None}, "cpu-hf-bf16": {"bench": str(tmp_path / "bench.json")}},
                 "turned_off_by": {"cpu-hf-fp32": {"bench": "bench.reference is false"}}}
    config = {"throughput_point": {"batch_size": 1, "max_tokens": None}}
    rec = history.build_record(artifacts, config)
    assert rec["targets"]["cpu-hf-fp32"]["bench_not_run"] == "bench.reference is false"
    target = rec["targets"]["cpu-hf-bf16"]
    assert "bench_not_run" not in target
    assert (target["throughput_tok_s"], target["throughput_point"]) == (12.5, "batch 1 x 4 tokens")  # skipped: not it
    earlier = json.loads(json.dumps(rec))  # a run that benchmarked the reference: no regression against it
    earlier["targets"]["cpu-hf-fp32"].update(bench_not_run=None, tpot_s=0.01)
    section = history.section([earlier, rec], TOLERANCES, show_runs=5)
    tpot = next(row for row in section["table"]["rows"] if row[:2] == ["cpu-hf-fp32", "TPOT"])
    assert tpot[2:] == ["10.0 ms", "not run (bench.reference is false)"]
    assert not section["regressions"]
