"""Bad config is refused before any job runs, with a message naming the key, the allowed values and the fix."""

from __future__ import annotations

import pytest
import yaml

from conftest import ROOT, copy_workflow, default_config, problems_of, snakemake
from portcheck.config import engine_settings, enabled_targets, load_schema, validate_config
from portcheck.errors import PortcheckError

SCHEMA = load_schema(ROOT / "config" / "schema.yaml")




def test_defaults_are_filled_in():
    config = validate_config({"targets": {"cpu-hf-fp32": {"enabled": True}}, "prompts": {"list": ["a"]}}, SCHEMA)
    assert config["logits"]["greedy_tokens"] == 8
    assert config["targets"]["cpu-hf-fp32"]["logprobs_topk"] == 20
    assert config["model"]["trust_remote_code"] is False
    assert engine_settings(config, "cpu-hf-fp32").trust_remote_code is False
    assert engine_settings(config, "cpu-hf-fp32").in_process is None  # vllm: on for cpu (engine_args)


def test_unknown_key_is_named_with_allowed_keys():
    config = default_config()
    config["model"]["sourc"] = "tiny"
    message = problems_of(config)
    assert "model.sourc" in message and "allowed here:" in message and "source" in message


def test_wrong_type_and_enum_name_the_key_and_values():
    config = default_config()
    config["logits"]["greedy_tokens"] = "eight"
    config["model"]["source"] = "s3"
    message = problems_of(config)
    assert "logits.greedy_tokens must be of type integer, got 'eight'" in message
    assert "model.source must be one of ['tiny', 'tiny-qwen3', 'hf', 'modelscope', 'local'], got 's3'" in message


def test_bad_target_name_lists_the_parts():
    config = default_config()
    config["targets"]["xpu-hf-bf16"] = {"enabled": True}
    assert "'xpu-hf-bf16'" in problems_of(config) and "cpu/gpu/npu" in problems_of(config)


def test_reference_not_defined_or_not_enabled():
    config = default_config()
    config["reference"] = "gpu-vllm-fp16"
    assert "reference target 'gpu-vllm-fp16' is not defined" in problems_of(config)
    config = default_config()
    config["targets"]["cpu-hf-fp32"]["enabled"] = False
    assert "reference target 'cpu-hf-fp32' is not enabled" in problems_of(config)


def test_empty_prompt_list(tmp_path):
    config = default_config()
    config["prompts"]["list"] = []
    assert "prompt list is empty" in problems_of(config)
    (tmp_path / "blank.txt").write_text("\n  \n")
    config["prompts"]["file"] = "blank.txt"
    assert "prompt list is empty" in problems_of(config, tmp_path)


def test_local_model_missing_or_without_weights(tmp_path):
    config = default_config()
    config["model"].update(source="local", path=str(tmp_path / "nowhere"))
    assert "does not exist" in problems_of(config)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text("{}")
    config["model"]["path"] = str(tmp_path / "empty")
    assert "no *.safetensors weights" in problems_of(config)


def test_enabled_targets_put_the_reference_first():
    config = validate_config(default_config(), SCHEMA, ROOT)
    assert enabled_targets(config)[0] == config["reference"]


def test_snakemake_refuses_bad_config_before_any_job(tmp_path):
    workdir = copy_workflow(tmp_path)
    config_path = workdir / "config" / "config.yaml"
    config = yaml.safe_load(config_path.read_text())
    config["compare"]["tie_tolerance"] = "small"
    config_path.write_text(yaml.safe_dump(config, allow_unicode=True))
    result = snakemake(workdir, "report", check=False)
    assert result.returncode != 0
    assert "compare.tie_tolerance must be of type number, got 'small'" in result.stdout + result.stderr
    assert not (workdir / "results").exists() and not (workdir / "resources").exists()


def test_a_config_the_schema_passed_passes_again_without_jsonschema(tmp_path, monkeypatch):
    """A no-op rerun validates the same (config, schema) pair: its pass is remembered by hash, and the same config
    comes back, defaults filled, with jsonschema unimportable; an edited config is checked by jsonschema again."""
    import sys

    cache = tmp_path / "valid-configs"
    config = default_config()
    first = validate_config(config, SCHEMA, ROOT, valid_cache=cache)
    assert len(list(cache.iterdir())) == 1
    monkeypatch.setitem(sys.modules, "jsonschema", None)  # any import of it now raises ImportError
    assert validate_config(config, SCHEMA, ROOT, valid_cache=cache) == first
    config["logits"]["greedy_tokens"] = 9
    with pytest.raises(ImportError):
        validate_config(config, SCHEMA, ROOT, valid_cache=cache)


def test_the_schema_is_kept_as_json_while_its_file_is_unchanged(tmp_path, monkeypatch):
    """A second run reads the kept schema (no YAML parse); an edited schema file, or a cache that does not read as
    one, is parsed again and the cache rewritten."""
    import json
    import shutil

    from portcheck import config as config_module

    schema_file, cache = tmp_path / "schema.yaml", tmp_path / ".snakemake" / "schema.json"
    shutil.copy(ROOT / "config" / "schema.yaml", schema_file)
    assert load_schema(schema_file, cache) == SCHEMA and json.loads(cache.read_text())["schema"] == SCHEMA
    monkeypatch.setattr(config_module, "load_yaml", lambda path: pytest.fail("parsed again"))
    assert load_schema(schema_file, cache) == SCHEMA
    monkeypatch.undo()
    schema_file.write_text(schema_file.read_text().replace("default: 20", "default: 21", 1))
    edited = load_schema(schema_file, cache)
    assert edited != SCHEMA and edited == yaml.safe_load(schema_file.read_text())
    cache.write_text("{not json")
    assert load_schema(schema_file, cache) == edited and json.loads(cache.read_text())["schema"] == edited


def test_a_config_the_schema_refuses_is_never_remembered(tmp_path):
    cache = tmp_path / "valid-configs"
    config = default_config()
    config["logits"]["greedy_tokens"] = "eight"
    for _ in range(2):  # refused the same way each time, with jsonschema's own description
        with pytest.raises(PortcheckError, match="config key logits.greedy_tokens must be of type integer"):
            validate_config(config, SCHEMA, ROOT, valid_cache=cache)
    assert not cache.exists()
    # the files on disk are checked every time: a pass of the schema does not pass a missing local model
    config = default_config()
    config["model"].update(source="local", path=str(tmp_path / "nowhere"))
    messages = []
    for _ in range(2):
        with pytest.raises(PortcheckError, match="nowhere") as refused:
            validate_config(config, SCHEMA, ROOT, valid_cache=cache)
        messages.append(str(refused.value))
    assert messages[0] == messages[1] and len(list(cache.iterdir())) == 1
