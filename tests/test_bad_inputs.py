"""Every bad input gets a message naming the file or key and the fix, never a traceback: thresholds out of range,
binary prompt files, missing or broken checkpoints (refused before any engine starts), mode runs of targets that
cannot run, and a failed dump leaves nothing that reads as part of a dump."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, copy_workflow, default_config, problems_of, snakemake
from portcheck import cli
from portcheck.config import load_schema, validate_config
from portcheck.errors import PortcheckError
from portcheck.model.checkpoint import build_manifest, check_checkpoint

SCHEMA = load_schema(ROOT / "config" / "schema.yaml")
PROMPTS = ["The capital of France is", "法国的首都是"]
BINARY = bytes(range(256)) * 4




def with_threshold(name: str, value) -> dict:
    config = default_config()
    config["compare"]["thresholds"][name]["value"] = value
    return config


@pytest.mark.parametrize("name, value, expected", [
    ("kld_mean_max", -0.1, "kld_mean_max.value: -0.1 is less than the minimum of 0"),
    ("kld_p99_max", -1, "kld_p99_max.value: -1 is less than the minimum of 0"),
    ("max_abs_err_max", -0.5, "max_abs_err_max.value: -0.5 is less than the minimum of 0"),
    ("ppl_rel_delta_max", -0.01, "ppl_rel_delta_max.value: -0.01 is less than the minimum of 0"),
    ("top1_agreement_min", 1.5, "top1_agreement_min.value: 1.5 is greater than the maximum of 1"),
    ("top1_agreement_min", -0.1, "top1_agreement_min.value: -0.1 is less than the minimum of 0"),
    ("cosine_min", -2, "cosine_min.value: -2 is less than the minimum of -1"),
    ("cosine_min", 1.01, "cosine_min.value: 1.01 is greater than the maximum of 1"),
    ("kld_mean_max", True, "kld_mean_max.value must be of type number, got True"),
    ("cosine_min", False, "cosine_min.value must be of type number, got False"),
    ("msprobe_rule", 1, "msprobe_rule.value must be of type boolean, got 1"),
    ("msprobe_rule", "yes please", "msprobe_rule.value must be of type boolean"),
])
def test_thresholds_out_of_range_are_refused(name, value, expected):
    assert expected in problems_of(with_threshold(name, value))


def test_thresholds_at_their_bounds_are_accepted():
    config = default_config()
    for name, value in {"kld_mean_max": 0, "top1_agreement_min": 1, "cosine_min": -1, "max_abs_err_max": 0,
                        "ppl_rel_delta_max": 0, "kld_p99_max": 0, "msprobe_rule": False}.items():
        config["compare"]["thresholds"][name]["value"] = value
    validate_config(config, SCHEMA, ROOT)


def test_negative_seeds_are_refused():
    config = default_config()
    config["bench"]["seed"] = -1
    assert "bench.seed: -1 is less than the minimum of 0" in problems_of(config)


def test_threshold_value_true_is_refused_by_the_cli(tmp_path, capsys):
    path = tmp_path / "thresholds.yaml"
    path.write_text(yaml.safe_dump({"compare": {"thresholds": {"kld_mean_max": {"value": True, "anchor": "x"}}}}))
    assert cli.main(["compare", "--baseline", "a", "--target", "b", "--config", str(path)]) == 2
    assert "kld_mean_max.value must be of type number, got True" in capsys.readouterr().err


def test_binary_prompts_file_is_named(tmp_path):
    (tmp_path / "prompts.bin").write_bytes(BINARY)
    config = default_config()
    config["prompts"]["file"] = "prompts.bin"
    config["model"] = {"source": "tiny"}
    problems = problems_of(config, tmp_path)
    assert "prompts file" in problems and "prompts.bin is not UTF-8 text" in problems and "iconv" in problems


def test_prompts_file_that_is_a_directory_is_named(tmp_path):
    (tmp_path / "prompts").mkdir()
    config = default_config()
    config["prompts"]["file"] = "prompts"
    assert "does not exist or is not a file" in problems_of(config, tmp_path)


@pytest.mark.parametrize("runs, fragment", [
    (["cpu-vllm-bf16+graph"], "modes.runs names cpu-vllm-bf16+graph, but target cpu-vllm-bf16 is not enabled"),
    (["npu-vllm-fp16+chunked"], "target npu-vllm-fp16 is not defined"),
])
def test_mode_runs_of_targets_that_cannot_run_are_refused(runs, fragment):
    config = default_config()
    config["targets"]["cpu-vllm-bf16"]["enabled"] = False
    config["modes"]["runs"] = runs
    assert fragment in problems_of(config)


def test_a_batch_mode_run_against_a_batched_base_is_refused_with_the_fix():
    config = default_config()
    config["modes"]["runs"] = ["cpu-vllm-bf16+batch"]
    assert "modes.runs: cpu-vllm-bf16+batch: the batch mode is set against the workload decoded one prompt at a " \
           "time" in problems_of(config) and "set modes.batched: false to run it" in problems_of(config)
    config["modes"]["batched"] = False
    validate_config(config, SCHEMA, ROOT)


def test_default_mode_runs_of_a_disabled_target_still_validate():
    # A profile that runs other targets keeps the shipped runs: the report lists them as not run.
    config = default_config()
    config["targets"]["cpu-vllm-bf16"]["enabled"] = False
    validate_config(config, SCHEMA, ROOT)


def test_naming_a_disabled_target_in_mode_runs_stops_before_any_job(tmp_path):
    workdir = copy_workflow(tmp_path)
    override = tmp_path / "runs.yaml"
    override.write_text(yaml.safe_dump({"modes": {"runs": ["cpu-vllm-bf16+graph"]}}))
    run = snakemake(workdir, "report", "--dry-run", "--configfile", str(ROOT / ".test" / "config.yaml"),
                    str(override), check=False)
    assert run.returncode != 0
    assert "target cpu-vllm-bf16 is not enabled" in run.stdout + run.stderr
    assert "Traceback" not in run.stdout + run.stderr


# --- checkpoints: checked before any engine starts -------------------------------------------------------------


@pytest.fixture
def broken(tiny_model_dir, tmp_path):
    """A copy of the tiny checkpoint to break."""
    def copy() -> Path:
        dest = tmp_path / "model"
        shutil.copytree(tiny_model_dir, dest)
        return dest
    return copy


def refusal(model_dir: Path, texts=PROMPTS) -> str:
    with pytest.raises(PortcheckError) as excinfo:
        check_checkpoint(model_dir, texts)
    return str(excinfo.value)


def test_truncated_safetensors_is_refused_naming_file_and_bytes(broken):
    model = broken()
    weights = model / "model.safetensors"
    with open(weights, "r+b") as handle:
        handle.truncate(weights.stat().st_size // 2)
    message = refusal(model)
    assert f"{weights} is cut short" in message and "bytes missing" in message and "copy it again" in message


def test_safetensors_with_a_garbled_header_is_refused(broken):
    model = broken()
    weights = model / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[8:16] = b"\xff" * 8
    weights.write_bytes(bytes(data))
    assert f"{weights} has a header that is not JSON" in refusal(model)


def test_invalid_config_json_is_refused_with_its_position(broken):
    model = broken()
    (model / "config.json").write_text('{"model_type": "qwen3_5",\n')
    message = refusal(model)
    assert f"{model / 'config.json'} is not valid JSON (line 2" in message and "restore it" in message


def test_missing_tokenizer_files_are_refused_not_a_one_token_tokenizer(broken):
    model = broken()
    (model / "tokenizer.json").unlink()  # tokenizer_config.json stays: transformers quietly builds 1 token
    message = refusal(model)
    assert "has 1 token(s)" in message and "copy the checkpoint's own tokenizer files" in message


def test_tokenizer_ids_beyond_the_vocabulary_are_refused(broken):
    model = broken()
    config = json.loads((model / "config.json").read_text())
    (config.get("text_config") or config)["vocab_size"] = 64
    (model / "config.json").write_text(json.dumps(config))
    message = refusal(model)
    assert "vocab_size is 64" in message and "belongs to another model" in message


def test_good_checkpoint_is_described_with_its_tokenizer(tiny_model_dir):
    manifest = build_manifest(tiny_model_dir, {"source": "tiny"}, PROMPTS)
    assert manifest["tokenizer"]["size"] > 1000 and 0 < manifest["tokenizer"]["max_id"] < 2048


def test_manifest_cli_names_a_bad_config_json(broken, tmp_path, capsys):
    model = broken()
    (model / "config.json").write_text("{")
    assert cli.main(["manifest", "--model", str(model), "--output", str(tmp_path / "m.json")]) == 2
    assert "config.json is not valid JSON" in capsys.readouterr().err
    assert not (tmp_path / "m.json").exists()


# --- portcheck dump: refused before the engine starts, nothing left behind --------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "portcheck.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=600)


def test_dump_of_a_missing_model_dir_is_named(tmp_path):
    run = run_cli("dump", "--target", "cpu-hf-fp32", "--model", str(tmp_path / "nowhere"),
                  "--output", str(tmp_path / "d.safetensors"))
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert f"model directory {tmp_path / 'nowhere'} does not exist" in run.stderr
    assert list(tmp_path.iterdir()) == []


def test_dump_of_binary_prompts_is_named(tiny_model_dir, tmp_path):
    (tmp_path / "prompts.txt").write_bytes(BINARY)
    run = run_cli("dump", "--target", "cpu-hf-fp32", "--model", str(tiny_model_dir), "--prompts",
                  str(tmp_path / "prompts.txt"), "--output", str(tmp_path / "d.safetensors"))
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert "prompts.txt is not UTF-8 text" in run.stderr


def test_dump_of_a_truncated_checkpoint_starts_no_engine(broken, tmp_path):
    model = broken()
    with open(model / "model.safetensors", "r+b") as handle:
        handle.truncate(1000)
    out = tmp_path / "out"
    out.mkdir()
    run = run_cli("dump", "--target", "cpu-hf-fp32", "--model", str(model), "--output", str(out / "d.safetensors"))
    assert run.returncode == 2 and "Traceback" not in run.stderr and "is truncated" in run.stderr
    assert list(out.iterdir()) == []


def test_failed_dump_leaves_no_side_file(tiny_model_dir, tmp_path):
    # The engine refuses prompts longer than max_model_len after the environment is captured.
    config = tmp_path / "short.yaml"
    config.write_text(yaml.safe_dump({"targets": {"cpu-hf-fp32": {"max_model_len": 16}}}))
    (tmp_path / "prompts.txt").write_text("word " * 40 + "\n")
    out = tmp_path / "out"
    out.mkdir()
    run = run_cli("dump", "--target", "cpu-hf-fp32", "--model", str(tiny_model_dir), "--config", str(config),
                  "--prompts", str(tmp_path / "prompts.txt"), "--output", str(out / "d.safetensors"))
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
    assert sorted(p.name for p in out.iterdir()) == []


# --- permissions: artifacts readable by the other users of a shared store ---------------------------------------


def test_built_model_and_layer_files_honour_the_umask(tiny_model_dir, tmp_path):
    from portcheck.dump.layers_file import write_layers
    from portcheck.engines.outputs import LayerStates

    old = os.umask(0o022)
    try:
        write_layers(tmp_path / "layers.safetensors", LayerStates(hidden=None, status="not run", reason="test"), {})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "layers.safetensors").stat().st_mode) == 0o644
    assert stat.S_IMODE((tiny_model_dir / "model.safetensors").stat().st_mode) & 0o044 == 0o044
    assert stat.S_IMODE(tiny_model_dir.stat().st_mode) & 0o055 == 0o055


@pytest.mark.parametrize("content, fragment", [
    (BINARY, "is not UTF-8 text"),
    (b"compare: [unclosed\n", "is not valid YAML"),
    (b"- just\n- a list\n", "holds a YAML list, not a mapping"),
])
def test_bad_config_file_is_named_by_the_cli(tmp_path, capsys, content, fragment):
    path = tmp_path / "config.yaml"
    path.write_bytes(content)
    assert cli.main(["compare", "--baseline", "a", "--target", "b", "--config", str(path)]) == 2
    error = capsys.readouterr().err
    assert str(path) in error and fragment in error


def test_verify_of_a_missing_folder_is_named(tmp_path, capsys):
    assert cli.main(["verify", str(tmp_path / "results")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_local_checkpoint_with_a_broken_config_is_refused_at_validation(broken):
    model = broken()
    (model / "config.json").write_text("{")
    config = default_config()
    config["model"] = {"source": "local", "path": str(model)}
    assert "config.json is not valid JSON" in problems_of(config)


def test_shard_index_naming_a_missing_shard_is_refused(broken):
    model = broken()
    index = {"weight_map": {"lm_head.weight": "model-00002-of-00002.safetensors"}}
    (model / "model.safetensors.index.json").write_text(json.dumps(index))
    assert "names shard model-00002-of-00002.safetensors, which is not in" in refusal(model)
