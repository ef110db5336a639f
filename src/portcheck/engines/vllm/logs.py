"""vLLM's own log, teed into a file per engine (a logging config passed as `log_config_file`), so facts vLLM
only logs in its child processes (weight-load time, KV cache size) can be read back, and an engine that dies
leaves its log tail in the error."""

from __future__ import annotations

import copy
import json
import logging.config
import os
import re
import tempfile
from pathlib import Path

LOG_TAIL_LINES = 60
# Figures vLLM only logs, by the key they are reported under: the patterns of vLLM's messages, then the wording of
# platform plugins (vllm-ascend's model runner says "Loading model weights took <x> GB").
LOGGED_FIGURES = {
    "weight_load_s": (r"Loading weights took ([\d.]+) seconds",),
    "model_init_s": (r"Initializing model took ([\d.]+) seconds",),
    "model_load_s": (r"Model loading took [\d.]+ GiB memory and ([\d.]+) seconds",),
    "model_load_gib": (r"Model loading took ([\d.]+) GiB memory", r"Loading model weights took ([\d.]+) GB"),
    "engine_init_s": (r"init engine \(profile, create kv cache, warmup model\) took ([\d.]+) s",),
    "kv_cache_tokens": (r"KV cache size: ([\d,]+) tokens",),
    "max_concurrency": (r"Maximum concurrency for [\d,]+ tokens per request: ([\d.]+)x",),
}
# Loggers whose records go to the engine's log file: vLLM's, and vllm-ascend's, which are not children of "vllm".
CAPTURED_LOGGERS = ("vllm", "vllm_ascend")


def logging_setup(extra: dict) -> tuple[Path | None, str | None]:
    """(log file, logging config file): vLLM's default logging (console) plus a FileHandler for this engine, in
    every vLLM process; the log file is extra["log_file"] or one in a new temporary directory.

    Skipped when the user configures vLLM's logging (VLLM_LOGGING_CONFIG_PATH, VLLM_CONFIGURE_LOGGING=0,
    or log_config_file in vllm_kwargs): then log-only facts are "not determined"."""
    user_kwargs = extra.get("vllm_kwargs") or {}
    if (os.environ.get("VLLM_LOGGING_CONFIG_PATH") or os.environ.get("VLLM_CONFIGURE_LOGGING") == "0"
            or "log_config_file" in user_kwargs or "logging_config" in user_kwargs):
        return None, None
    from vllm import logger as vllm_logger

    if extra.get("log_file"):
        log_path = Path(extra["log_file"]).resolve()
        log_path.parent.mkdir(parents=True, exist_ok=True)
        workdir = log_path.parent
    else:
        workdir = Path(tempfile.mkdtemp(prefix="portcheck-vllm-"))
        log_path = workdir / "engine.log"
    log_path.write_text("", encoding="utf-8")
    config = copy.deepcopy(vllm_logger.DEFAULT_LOGGING_CONFIG)
    level = os.environ.get("VLLM_LOGGING_LEVEL", "INFO").upper()
    config["handlers"]["vllm"]["level"] = level
    config["formatters"]["portcheck_file"] = {
        "format": "%(asctime)s pid=%(process)d %(levelname)s [%(filename)s:%(lineno)d] %(message)s"
    }
    config["handlers"]["portcheck_file"] = {
        "class": "logging.FileHandler", "filename": str(log_path), "mode": "a",
        "formatter": "portcheck_file", "level": "DEBUG" if level == "DEBUG" else "INFO",
    }
    for name in CAPTURED_LOGGERS:
        config["loggers"][name] = {**config["loggers"]["vllm"], "handlers": ["vllm", "portcheck_file"],
                                   "level": "DEBUG" if level == "DEBUG" else "INFO"}
    config_path = workdir / f"{log_path.stem}.logging.json"
    config_path.write_text(json.dumps(config, indent=1), encoding="utf-8")
    return log_path, str(config_path)


def logging_route(config_path: str | None, engine_fields: frozenset[str]) -> tuple[dict, dict]:
    """(vllm.LLM kwargs, environment) that hand vLLM the logging config. The engine argument log_config_file exists
    only from the vLLM 0.32 line on (passing it to an older EngineArgs is a TypeError); before it, every vLLM
    process reads VLLM_LOGGING_CONFIG_PATH when it imports vllm.logger."""
    if not config_path:
        return {}, {}
    if "log_config_file" in engine_fields:
        return {"log_config_file": config_path}, {}
    return {}, {"VLLM_LOGGING_CONFIG_PATH": config_path}


def apply_logging_config(config_path: str) -> None:
    """Configure this process as vLLM would from VLLM_LOGGING_CONFIG_PATH: it imported vllm.logger already, and
    the engine process it forks inherits the handlers."""
    logging.config.dictConfig(json.loads(Path(config_path).read_text(encoding="utf-8")))


def read_log(log_path: Path | None) -> str:
    """The log's text; "" when it is not captured."""
    if log_path and log_path.is_file():
        return log_path.read_text(encoding="utf-8", errors="replace")
    return ""


def logged_figures(text: str) -> dict[str, float]:
    """The LOGGED_FIGURES found in a log's text (the last occurrence of each)."""
    found = {}
    for key, patterns in LOGGED_FIGURES.items():
        matches = [m for pattern in patterns for m in re.findall(pattern, text)]
        if matches:
            found[key] = float(matches[-1].replace(",", ""))
    return found


def log_tail(log_path: Path | None, lines: int = LOG_TAIL_LINES) -> str | None:
    """The last lines of the log (each cut at 500 characters), or None when it is not captured or empty."""
    text = read_log(log_path)
    return "\n".join(line[:500] for line in text.splitlines()[-lines:]) if text else None


def log_tail_text(log_path: Path | None) -> str:
    """The log tail as the end of an error message."""
    tail = log_tail(log_path)
    if tail:
        return f"\n--- last {LOG_TAIL_LINES} lines of the vLLM log {log_path} ---\n{tail}"
    return "\n(no vLLM log captured: vLLM's logging is configured by the user or the log file is empty)"
