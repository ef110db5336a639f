"""The serving check's machinery without vLLM: port choice, the server process's lifecycle (ready, failing to
start, hanging, stopped with its children on every exit path), the `vllm serve` arguments, and the load sweep
through a stand-in `vllm bench serve` (its parser and main(), as the sweep calls them): the levels, the rates
between, flags a line lacks, the saturation point, and the tool missing or failing with the parity checks still
run and the report kept. The real server and the real `vllm bench serve` run in test_workflow (rule check_serving
on cpu-vllm-bf16)."""

from __future__ import annotations

import json
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


def test_curl_command_shows_the_values_that_worked():
    command = serve.curl_command(8001, {"model": "m", "prompt": "Machine learning is a", "max_tokens": 50,
                                        "temperature": 0.7})
    assert command.startswith("curl http://127.0.0.1:8001/v1/completions")
    assert '"prompt": "Machine learning is a"' in command and '"max_tokens": 50' in command


# ---------------------------------------------------------------- the load sweep (benchmarks/serve_sweep.py)

from portcheck.benchmarks import serve_sweep as sweep  # noqa: E402

SERVE_CONFIG = {"port": None, "requests_per_level": 4, "input_len": 8, "max_tokens": 4, "warmup": 1, "seed": 0,
                "percentiles": [50, 99], "greedy_prompts": None, "start_timeout_s": 30, "request_timeout_s": 10,
                "sweep": {"rates": 2, "max_seconds": 120,
                          "saturation": {"throughput_gain_max": 0.10, "ttft_growth_min": 2.0}},
                "slo": {"ttft_ms": 50, "tpot_ms": None, "e2el_ms": None},
                "curl": {"prompt": "Machine learning is a", "max_tokens": 4, "temperature": 0.7, "seed": 1}}

# A stand-in for `vllm bench serve` (vllm.benchmarks.serve: add_cli_args + main), without --goodput and
# --trust-remote-code: synchronous serves 2 req/s, throughput 2.2 req/s with 10x the median TTFT, a rate r serves r.
FAKE_BENCH = '''
import argparse, json, os, pathlib
FLAGS = ("--host", "--port", "--model", "--tokenizer", "--dataset-path", "--result-dir", "--result-filename",
         "--custom-output-len", "--temperature", "--percentile-metrics", "--metric-percentiles")
def add_cli_args(parser):
    for flag in FLAGS:
        parser.add_argument(flag)
    parser.add_argument("--dataset-name", choices=["random", "custom"], default="random")
    for flag in ("--num-prompts", "--max-concurrency", "--seed", "--num-warmups"):
        parser.add_argument(flag, type=int)
    parser.add_argument("--request-rate", type=float, default=float("inf"))
    for flag in ("--save-result", "--skip-chat-template", "--disable-shuffle", "--ignore-eos", "--disable-tqdm"):
        parser.add_argument(flag, action="store_true")
def main(args):
    if os.environ.get("FAKE_BENCH_FAIL"):
        raise ConnectionError("Cannot connect to host 127.0.0.1:1")
    prompts = [json.loads(line)["prompt"] for line in open(args.dataset_path, encoding="utf-8")]
    assert len(prompts) == args.num_prompts and args.dataset_name == "custom" and args.save_result
    unbounded = args.max_concurrency is None and args.request_rate == float("inf")
    served = 2.0 if args.max_concurrency == 1 else (2.2 if unbounded else args.request_rate)
    result = {"completed": args.num_prompts, "failed": 0, "request_throughput": served,
              "output_throughput": served * 4, "median_ttft_ms": 100.0 if unbounded else 10.0, "p99_ttft_ms": 120.0,
              "median_tpot_ms": 5.0, "p99_tpot_ms": 6.0, "ttfts": [0.01] * args.num_prompts, "input_lens": [8]}
    pathlib.Path(args.result_dir, args.result_filename).write_text(json.dumps(result))
'''


class CharTokenizer:
    """Stands in for the model's tokenizer: one id per character."""

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) for c in text]}

    def decode(self, ids):
        return "".join(map(chr, ids))


@pytest.fixture
def fake_vllm(tmp_path, monkeypatch):
    """A `vllm` package holding only the stand-in bench (and an empty `pandas`, which the sweep asks for), first on the
    sweep process's path."""
    root = tmp_path / "fake_vllm"
    for package in ("vllm", "vllm/benchmarks", "vllm/utils", "pandas"):
        (root / package).mkdir(parents=True)
        (root / package / "__init__.py").write_text("")
    (root / "vllm/benchmarks/serve.py").write_text(FAKE_BENCH)
    (root / "vllm/utils/argparse_utils.py").write_text("from argparse import ArgumentParser as FlexibleArgumentParser\n")
    monkeypatch.setenv("PYTHONPATH", str(root))
    return root


CORPUS = "The quick brown fox jumps over the lazy dog. " * 4 + "法国的首都是巴黎。" * 4


def _sweep(tmp_path, python=None):
    return sweep.run_sweep(1, tmp_path, CharTokenizer(), CORPUS, SERVE_CONFIG, False, tmp_path / "bench.log",
                           python=python or [sys.executable, "-S"])  # -S: no site-packages, so no real vLLM


def test_the_sweep_runs_synchronous_throughput_then_rates_between_on_corpus_text(tmp_path, fake_vllm):
    result = _sweep(tmp_path)
    assert result["status"] == "ok" and result["error"] is None, result
    levels = result["levels"]
    assert [level["name"] for level in levels] == ["synchronous", "rate 2.07/s", "rate 2.13/s", "throughput"]
    assert [level["request_throughput"] for level in levels] == pytest.approx([2.0, 2.2 / 3 + 4 / 3, 4.4 / 3 + 2 / 3, 2.2], rel=1e-5)
    assert all(level["completed"] == 4 and "ttfts" not in level for level in levels)  # per-request arrays left out
    assert "--max-concurrency 1" in levels[0]["command"] and "--num-warmups 1" in levels[0]["command"]
    assert "--request-rate inf" in levels[-1]["command"] and "--max-concurrency" not in levels[-1]["command"]
    assert "--dataset-name custom --dataset-path corpus.jsonl" in levels[0]["command"]
    assert result["flags_left_out"] == ["--goodput"]  # this stand-in's line lacks it: named, not assumed
    workload = result["workload"]  # windows spread over the whole text: the Chinese end too
    assert workload["first_prompt"] == "The quic" and workload["last_prompt"] == "国的首都是巴黎。" and workload["prompts"] == 4
    # +3% throughput alone is no saturation; +3% with 10x the median TTFT is
    saturation = result["saturation"]
    assert saturation["reached"] and saturation["level"] == "throughput"
    assert [round(step["ttft_growth"]) for step in saturation["steps"]] == [1, 1, 10]


def test_rates_between_and_the_saturation_rule():
    assert sweep.rates_between(1.0, 4.0, 2) == pytest.approx([2.0, 3.0])
    assert sweep.rates_between(2.0, 1.5, 2) == [] and sweep.rates_between(None, 3.0, 2) == []
    levels = [{"name": n, "max_concurrency": c, "request_rate": r, "output_throughput": t, "median_ttft_ms": f}
              for n, c, r, t, f in (("throughput", None, None, 100, 30), ("synchronous", 1, None, 40, 10),
                                    ("rate 2/s", None, 2.0, 80, 12))]
    result = sweep.saturation(levels, 0.10, 2.0)
    assert not result["reached"] and result["best_level"] == "throughput"
    assert [(s["from"], s["to"]) for s in result["steps"]] == [("synchronous", "rate 2/s"), ("rate 2/s", "throughput")]
    assert "less than 10%" in result["rule"] and "more than 2x" in result["rule"]


def test_a_bench_serve_without_the_custom_dataset_is_refused_by_name():
    flags = {flag: None for flag in sweep.REQUIRED_FLAGS}
    flags["--dataset-name"] = ["random", "sharegpt"]
    assert "no custom dataset" in sweep.flag_problem(flags)
    del flags["--result-filename"]
    assert sweep.flag_problem(flags) == "this vllm bench serve lacks --result-filename"


def test_a_bench_serve_environment_without_pandas_is_refused_with_the_fix(monkeypatch):
    flags = {flag: ["custom"] if flag == "--dataset-name" else None for flag in sweep.REQUIRED_FLAGS}
    assert sweep.flag_problem(flags) is None  # pandas is in this environment
    real_find_spec = sweep.importlib.util.find_spec
    monkeypatch.setattr(sweep.importlib.util, "find_spec", lambda name: None if name == "pandas" else real_find_spec(name))
    assert sweep.flag_problem(flags).startswith("vllm bench serve's custom dataset needs pandas")
    assert f"pip install pandas in {sys.prefix}" in sweep.flag_problem(flags)


def test_a_failing_bench_serve_is_reported_with_its_error(tmp_path, fake_vllm, monkeypatch):
    monkeypatch.setenv("FAKE_BENCH_FAIL", "1")
    result = _sweep(tmp_path)
    assert result["status"] == "failed" and "Cannot connect to host 127.0.0.1:1" in result["error"]
    assert [level["name"] for level in result["levels"]] == ["synchronous"]  # stopped at the first failure
    assert "Cannot connect" in (tmp_path / "bench.log").read_text()  # the traceback is in its log


FAKE_SERVER = """
import http.server, json, sys
port = int(sys.argv[sys.argv.index("--port") + 1])
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = body["prompt"]
        ids = [(sum(prompt) + k) % 97 for k in range(body["max_tokens"])] if isinstance(prompt, list) else []
        choice = {"index": 0, "text": "fake answer", "finish_reason": "length", "logprobs": None, "token_ids": ids}
        answer = json.dumps({"id": "x", "object": "text_completion", "created": 0, "model": body["model"],
                             "choices": [choice], "usage": {"prompt_tokens": 1, "completion_tokens": len(ids),
                                                            "total_tokens": 1 + len(ids)}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)
    def log_message(self, *a):
        pass
http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
"""


def _greedy_dump(path):
    import numpy as np

    from portcheck.dump.logits_file import write_dump
    from portcheck.engines.outputs import Generation, PromptScores

    prompts = [[5, 6, 7], [8, 9]]
    scores = [PromptScores(np.array(p), np.zeros((len(p), 4), dtype=np.float32)) for p in prompts]
    greedy = [Generation([(sum(p) + k) % 97 for k in range(3)]) for p in prompts]
    write_dump(path, scores, greedy, {"model_sha": "m", "tokenizer_sha": "t", "prompts_sha": "p",
                                      "target": "cpu-vllm-bf16"})


def test_a_missing_bench_serve_is_shown_and_the_parity_checks_and_report_are_kept(tmp_path, monkeypatch):
    """`vllm bench serve` absent from the target's environment: serve.json carries its error, the greedy parity
    check and the seed request still ran against the server, and the report shows all three."""
    import transformers

    from portcheck.report.sections.performance import _serve_view

    monkeypatch.setattr(serve, "vllm_executable", lambda: [sys.executable, _script(tmp_path, "server.py", FAKE_SERVER)])
    monkeypatch.setattr(serve, "run_sweep", lambda *a, **k: sweep.run_sweep(*a, **k, python=[sys.executable, "-S"]))
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: CharTokenizer())
    (tmp_path / "corpus.txt").write_text(CORPUS, encoding="utf-8")
    _greedy_dump(tmp_path / "logits.safetensors")
    output = tmp_path / "serve.json"
    serve.check_serving("cpu-vllm-bf16", tmp_path, EngineSettings(max_model_len=64), SERVE_CONFIG,
                        tmp_path / "logits.safetensors", output, tmp_path / "server.log", tmp_path / "corpus.txt",
                        tmp_path / "bench.log")
    result = json.loads(output.read_text())
    assert result["sweep"]["status"] == "missing" and result["levels"] == [] and result["errors"] == 1
    assert "vllm bench serve is not available in" in result["sweep"]["error"]
    assert "No module named 'vllm'" in result["sweep"]["error"]
    assert result["greedy_check"]["status"] == "ok" and result["greedy_check"]["equal"] == 2
    assert result["seed_request"]["ok"] and result["seed_request"]["text"] == "fake answer"
    view = _serve_view(result, "results/m/cpu-vllm-bf16/serve.json")
    assert view["sweep_error"].startswith("❌ vllm bench serve is not available in ") and "bench.log" in view["sweep_error"]
    assert view["sweep"]["rows"] == [] and view["greedy"].startswith("✅ yes 2/2 greedy completions")
    assert "not reached within the sweep" in view["saturation"] and view["curl_ok"]


def test_a_corpus_too_short_for_the_workload_is_refused_naming_the_settings(tmp_path):
    with pytest.raises(PortcheckError, match=r"serve.requests_per_level 4 x serve.input_len 8 need 32 corpus tokens; "
                                             r"the corpus has 5"):
        sweep.write_workload(tmp_path / "w.jsonl", CharTokenizer(), "short", 4, 8)
