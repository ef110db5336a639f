"""Model acquisition: the real download code against a local hub, failures that leave nothing behind."""

from __future__ import annotations

import json
import socket

import pytest

from fakehub import fake_hub
from portcheck.model.acquire import fetch_model
from portcheck.model.checkpoint import build_manifest, model_sha
from portcheck.errors import PortcheckError


@pytest.fixture
def hub_env(monkeypatch):
    """Point huggingface_hub at a local endpoint and keep its caches inside the test."""

    def use(endpoint: str):
        monkeypatch.setenv("HF_ENDPOINT", endpoint)

    return use


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def leftovers(parent):
    return sorted(p.name for p in parent.iterdir()) if parent.exists() else []


def test_hf_download_from_local_hub(tiny_model_dir, tmp_path, hub_env):
    with fake_hub(tiny_model_dir, extra={"pytorch_model.bin": b"pickled"}) as (endpoint, _):
        hub_env(endpoint)
        dest = fetch_model("hf", tmp_path / "models" / "m", repo_id="org/tiny", revision="main")
    assert (dest / "model.safetensors").is_file() and (dest / "tokenizer.json").is_file()
    assert not (dest / "pytorch_model.bin").exists(), "pickled weights must never be downloaded"
    assert model_sha(dest) == model_sha(tiny_model_dir)
    manifest = build_manifest(dest, {"source": "hf", "repo_id": "org/tiny"})
    assert all(not f["path"].startswith(".") for f in manifest["files"])
    assert leftovers(tmp_path / "models") == ["m"]


def test_token_is_sent_but_never_reported(tiny_model_dir, tmp_path, hub_env, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secret_token_123")
    with fake_hub(tiny_model_dir, fail={"model.safetensors"}) as (endpoint, seen):
        hub_env(endpoint)
        with pytest.raises(PortcheckError) as excinfo:
            fetch_model("hf", tmp_path / "models" / "m", repo_id="org/tiny")
    assert any("hf_secret_token_123" in h.get("authorization", h.get("Authorization", "")) for h in seen)
    assert "hf_secret_token_123" not in str(excinfo.value)
    assert leftovers(tmp_path / "models") == [], "a failed download must leave no directory"


def test_unreachable_hub_names_the_fix(tmp_path, hub_env):
    hub_env(f"http://127.0.0.1:{closed_port()}")
    with pytest.raises(PortcheckError) as excinfo:
        fetch_model("hf", tmp_path / "models" / "m", repo_id="Qwen/Qwen3.5-0.8B-Base")
    message = str(excinfo.value)
    assert "Hugging Face Hub" in message and "source: local" in message
    assert leftovers(tmp_path / "models") == []


def test_download_without_weights_is_refused(tmp_path, hub_env):
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "config.json").write_text(json.dumps({"model_type": "qwen3_5"}))
    with fake_hub(tmp_path / "repo") as (endpoint, _):
        hub_env(endpoint)
        with pytest.raises(PortcheckError, match=r"no \*\.safetensors weights"):
            fetch_model("hf", tmp_path / "models" / "m", repo_id="org/tiny")
    assert leftovers(tmp_path / "models") == []


def test_modelscope_unreachable(tmp_path, monkeypatch):
    monkeypatch.setenv("MODELSCOPE_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "ms-cache"))
    with pytest.raises(PortcheckError, match="from ModelScope"):
        fetch_model("modelscope", tmp_path / "models" / "m", repo_id="Qwen/Qwen3.5-0.8B-Base")
    assert leftovers(tmp_path / "models") == []


def test_interrupted_build_leaves_no_model(tmp_path, monkeypatch):
    import portcheck.model.tiny

    def explode(out_dir, seed=0):
        (out_dir / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(portcheck.model.tiny, "build_tiny_model", explode)
    with pytest.raises(KeyboardInterrupt):
        fetch_model("tiny", tmp_path / "models" / "m")
    assert leftovers(tmp_path / "models") == []
