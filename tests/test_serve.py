"""The serving check's machinery without vLLM: port choice, the server process's lifecycle (ready, failing to
start, hanging, stopped with its children on every exit path), the `vllm serve` arguments and the served latency
arithmetic. The real server runs in test_workflow (rule check_serving on cpu-vllm-bf16)."""

from __future__ import annotations

import os
import socket
import sys
import textwrap
import time

import pytest

from portcheck.benchmarks import serving as serve
from portcheck.errors import PortcheckError
from portcheck.engines.settings import EngineSettings


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is gone for our purposes
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_a_port_in_use_makes_another_one_chosen():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        assert not serve.port_free(taken)
        chosen = serve.choose_port(taken)
        assert chosen != taken and serve.port_free(chosen)
    free = serve.choose_port(None)
    assert serve.choose_port(free) == free


HEALTHY = """
import http.server, os, subprocess, sys
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])  # a child, like vLLM's engine core
with open(sys.argv[2], "w") as f:
    f.write(str(os.getpid()))
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()
    def log_message(self, *a):
        pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


def _script(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_server_becomes_healthy_and_is_stopped_with_its_children(tmp_path):
    port = serve.choose_port()
    script = _script(tmp_path, "healthy.py", HEALTHY)
    log = tmp_path / "server.log"
    with serve.Server([sys.executable, script, str(port), str(tmp_path / "pid")], port, log) as server:
        ready = server.wait_healthy(30, poll_s=0.1)
        assert ready >= 0
        leader = server.process.pid
        import psutil

        children = [c.pid for c in psutil.Process(leader).children(recursive=True)]
        assert children
    assert not _alive(leader)
    deadline = time.time() + 10
    while any(_alive(pid) for pid in children) and time.time() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in children), "the server's children must be gone too"


def test_a_server_that_fails_to_start_fails_with_its_log_tail_and_is_gone(tmp_path):
    script = _script(tmp_path, "fails.py", """
        import sys
        print("loading the model ...")
        print("ValueError: Unexpected head dim size, 32", flush=True)
        sys.exit(3)
    """)
    log = tmp_path / "server.log"
    with pytest.raises(PortcheckError) as error:
        with serve.Server([sys.executable, script], serve.choose_port(), log) as server:
            pid = server.process.pid
            server.wait_healthy(30, poll_s=0.1)
    message = str(error.value)
    assert "exited with code 3 before it was ready" in message
    assert "Unexpected head dim size, 32" in message and str(log) in message
    assert not _alive(pid)


def test_a_server_that_never_gets_ready_times_out_and_is_killed(tmp_path):
    script = _script(tmp_path, "hangs.py", """
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # even a server that ignores SIGTERM goes
        print("starting", flush=True)
        time.sleep(600)
    """)
    with pytest.raises(PortcheckError, match="did not answer .* within 1 s"):
        with serve.Server([sys.executable, script], serve.choose_port(), tmp_path / "log") as server:
            pid = server.process.pid
            server.stop_grace_s = 1
            server.wait_healthy(1, poll_s=0.2)
    assert not _alive(pid)


def test_server_args_mirror_the_offline_engine_settings():
    settings = EngineSettings(seed=3, max_model_len=512, enforce_eager=True, max_num_seqs=16)
    args = serve.server_args("cpu-vllm-bf16", "/m", settings, 8123)
    text = " ".join(args)
    assert args[:2] == ["serve", "/m"]
    assert "--host 127.0.0.1 --port 8123" in text and "--dtype bfloat16" in text and "--seed 3" in text
    assert "--enforce-eager" in args and "--language-model-only" in args and "--no-enable-prefix-caching" in args
    assert "--max-model-len 512" in text and "--max-num-seqs 16" in text
    assert "--gpu-memory-utilization 0.3" in text  # cpu: share of host RAM, as the offline engine
    assert "--no-trust-remote-code" in args and "--trust-remote-code" not in args
    assert "--served-model-name portcheck-model" in text and "--disable-uvicorn-access-log" in args
    npu = serve.server_args("npu-vllm-bf16", "/m", EngineSettings(gpu_memory_utilization=0.9), 1)
    assert "--gpu-memory-utilization 0.9" in " ".join(npu)


def test_served_latency_uses_the_servers_token_count():
    # chunks at 0.2, 0.3, 0.5 s; the server says 5 tokens (a chunk may carry several)
    result = {"times": [0.2, 0.3, 0.5], "output_tokens": 5, "error": None}
    lat = serve.served_latency(result)
    assert lat["ttft"] == pytest.approx(0.2) and lat["e2e"] == pytest.approx(0.5)
    assert lat["tpot"] == pytest.approx(0.3 / 4)
    assert lat["itl"] == pytest.approx([0.1, 0.2])
    assert serve.served_latency({"times": [], "error": None})["ttft"] is None


def test_curl_command_shows_the_values_that_worked():
    command = serve.curl_command(8001, {"model": "m", "prompt": "Machine learning is a", "max_tokens": 50,
                                        "temperature": 0.7})
    assert command.startswith("curl http://127.0.0.1:8001/v1/completions")
    assert '"prompt": "Machine learning is a"' in command and '"max_tokens": 50' in command
