"""`make calibrate`: the checks' detection table. Each fault class of the plugin at two magnitudes and clean runs
(other corpus windows, other decode prompts) on the target cpu-vllm-bf16, against the hf fp32 reference, with the
bf16 floor (cpu-hf-bf16) as the unit: which checks fail, and the clean runs' false failures per check.

The checks are the report's own functions on the report's default settings: the corpus (pooled + growth + vs
floor), the decode steps (pooled + growth + decode vs prefill + vs floor; the workload decoded as the decode dump
decodes, in one batch where it fits), the chunked-prefill mode (pooled + growth + vs floor + vs base) and the batch
mode (pooled + vs base: the workload decoded each prompt alone, as the batch mode's base is, modes.batched false).
Faults are switched inside two running engines (base and chunked) through the worker's portcheck_set_fault, so the
whole table costs two engine starts.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import time
from pathlib import Path
from typing import Any, Iterator

from portcheck.faults import catalog as faults
from portcheck.faults import vllm_plugin
from portcheck.atomic import atomic_path
from portcheck.compare.layers import compare_layers_files
from portcheck.compare.positions import compare_corpus_files, compare_decode_files
from portcheck.config import corpus_path, engine_settings, load_prompts, read_corpus_text
from portcheck.dump.compact import Storage
from portcheck.dump.corpus import corpus_job, cut_windows
from portcheck.dump.decode_reference import score_decode
from portcheck.dump.run import decode_rows, load_tokenizer, score_windows, tokenize, write_corpus_dump, write_decode_dump
from portcheck.dump.layers_file import write_layers
from portcheck.engines.factory import make_engine
from portcheck.env.capture import cpu_model, float_kernel_flags
from portcheck.env.versions import STACK_DISTRIBUTIONS, distribution_version
from portcheck.hashing import sha256_text
from portcheck.engines.settings import EngineSettings
from portcheck.model.checkpoint import load_model_config, model_sha, text_settings, tokenizer_sha
from portcheck.modes.catalog import mode_settings
from portcheck.modes.compare import mode_vs_base
from portcheck.modes.workload import batch_workload, mode_workload
from portcheck.targets import FLOOR_TARGET, parse_target

TARGET = "cpu-vllm-bf16"
REFERENCE = "cpu-hf-fp32"
# Two magnitudes per class: a small port error and a large one (where: the class's default).
MAGNITUDES = {
    "state_dropped": (2, 99),
    "state_decay": (0.1, 1.0),
    "state_rounding": (7, 3),
    "decode_state": (0.02, 0.2),
    "layer_scale": (0.02, 0.1),
    "layer_noise": (0.05, 0.3),
    "rope_offset": (1, 16),
    "batch_noise": (0.01, 0.1),
}
# Classes the calibration's two engines (base, chunked) cannot show: mtp_noise acts in the MTP drafter only, whose
# acceptance check is measured against the reference MTP in tests/test_modes.py.
NOT_CALIBRATED = {"mtp_noise": "acts in the MTP drafter, which the calibration's engines do not start",
                  "vision_noise": "acts in the vision tower, which the calibration's text-only engines do not run "
                                  "(tests/test_vision.py measures its catch)"}
CLEAN_RUNS = 10
LAYERS = "layers over the floor (localises; not in the verdict)"
CHECKS = ("corpus", "corpus growth", "corpus vs floor", "decode", "decode growth", "decode vs prefill",
          "decode vs floor", "chunked", "chunked growth", "chunked vs floor", "chunked vs base", "batch",
          "batch vs base")


def plan(short: bool) -> tuple[list[str], int]:
    """The faults to run (each class at both magnitudes; short: at the larger only) and the clean runs."""
    chosen = [f"{name}:{sizes[-1] if short else size:g}" for name, sizes in MAGNITUDES.items()
              for size in (sizes[-1:] if short else sizes)]
    return chosen, 2 if short else CLEAN_RUNS


@contextlib.contextmanager
def _fault_plugin() -> Iterator[None]:
    """Every vLLM process of this run patched (inert until a fault is switched on); this process unpatched after
    (vLLM loads its plugins here too)."""
    before = os.environ.get(faults.ENV)
    os.environ[faults.ENV] = "layer_scale:0"  # patches in, changing nothing
    try:
        yield
    finally:
        vllm_plugin.unpatch()
        if before is None:
            os.environ.pop(faults.ENV, None)
        else:
            os.environ[faults.ENV] = before


def _switch(engine, fault: str | None) -> None:
    result = engine.llm.collective_rpc("portcheck_set_fault", args=(fault or "none",))[0]
    if not result.get("ok"):
        raise RuntimeError(f"could not switch to fault {fault}: {result}")
    with contextlib.suppress(Exception):
        engine.llm.reset_prefix_cache()  # nothing computed under another fault may be read


class Calibration:
    def __init__(self, model_dir: str | Path, config: dict, out_dir: str | Path, base_dir: str | Path = "."):
        self.model_dir, self.config, self.out = Path(model_dir), config, Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.tokenizer = load_tokenizer(model_dir)
        self.model_sha, self.tokenizer_sha = model_sha(model_dir), tokenizer_sha(model_dir)
        self.text = read_corpus_text(corpus_path(config, base_dir))
        self.corpus = corpus_job(corpus_path(config, base_dir), config["corpus"], self.text)
        self.prompts = tokenize(self.tokenizer, load_prompts(config, base_dir))
        self.modes = config["modes"]
        self.compare = config["compare"]
        self.positions = self.compare["positions"]
        self.settings = engine_settings(config, TARGET)
        text = text_settings(load_model_config(model_dir))
        vocab, self.layer_types = text.get("vocab_size"), text.get("layer_types") or []
        self.storage = Storage.from_config(config.get("logits") or {}, vocab)

    # -- inputs of run k: other windows and other decode prompts ------------------------------------------------

    def windows(self, k: int) -> list[list[int]]:
        ids = list(self.tokenizer(self.text)["input_ids"])
        length, count = self.corpus["window_length"], self.corpus["windows"]
        spare = len(ids) - length * count
        return cut_windows(ids[k * spare // CLEAN_RUNS:], length, count)

    def decode_prompts(self, k: int) -> list[list[int]]:
        """The seed prompts rotated by k: the workload takes the first ones."""
        return self.prompts[k % len(self.prompts):] + self.prompts[: k % len(self.prompts)]

    def workload(self, k: int) -> list[list[int]]:
        return mode_workload(self.tokenizer, self.text, self.decode_prompts(k), self.modes, self.settings.max_model_len)

    def batch(self, k: int) -> list[list[int]]:
        return batch_workload(self.tokenizer, self.text, self.decode_prompts(k), self.modes, self.settings.max_model_len)

    # -- the engines ---------------------------------------------------------------------------------------------

    def score_reference(self, runs: int) -> dict[int, float]:
        """The reference's and the floor's corpus dumps and layers of each window set; returns the floor's mean KLD
        on each."""
        floors = {}
        for target in (REFERENCE, FLOOR_TARGET):
            with make_engine(parse_target(target), self.model_dir, EngineSettings(threads=1)) as engine:
                for k in range(runs):
                    self._corpus_dump(engine, self.windows(k), self.out / f"{target}.{k}.corpus.safetensors", target)
                    self._layers(engine, k, self.out / f"{target}.{k}.layers.safetensors", target)
        for k in range(runs):
            floor = self._compare_corpus(k, self.out / f"{FLOOR_TARGET}.{k}.corpus.safetensors")
            floors[k] = floor["overall"]["kld_mean"]
        return floors

    def _corpus_dump(self, engine, windows, path: Path, target: str) -> None:
        writer = score_windows(engine, windows, path, self.storage)
        write_corpus_dump(writer, self._meta(target), {**self.corpus, "windows": len(windows)})

    def layer_sequences(self, k: int) -> list[list[int]]:
        """What the dump captures layers on: the seed prompts and the first corpus window(s)."""
        return self.prompts + self.windows(k)[: int(self.config["layers"]["windows"])]

    def _layers(self, engine, k: int, path: Path, target: str) -> None:
        sequences = self.layer_sequences(k)
        write_layers(path, engine.layer_states(sequences), state_sequences=1, meta={
            "target": target, "model_sha": self.model_sha, "sequences_sha": sha256_text(json.dumps(sequences)),
            "prompts": len(self.prompts), "layer_types": list(self.layer_types)})

    def _meta(self, target: str) -> dict:
        t = parse_target(target)
        return {"target": target, "engine": t.engine, "dtype": t.dtype, "device": t.device,
                "model_sha": self.model_sha, "tokenizer_sha": self.tokenizer_sha}

    def run_target(self, runs: list[tuple[str, int, str | None]], chunked: bool) -> None:
        """Each run (name, window set, fault) in one engine: the base configuration's corpus, decode and batch
        decode, or the chunked mode's corpus."""
        settings = mode_settings(self.settings, "chunked" if chunked else "batch", self.modes)
        with _fault_plugin(), make_engine(parse_target(TARGET), self.model_dir, settings) as engine:
            for name, k, fault in runs:
                _switch(engine, fault)
                if chunked:
                    self._corpus_dump(engine, self.windows(k), self.out / f"{name}.chunked.safetensors", TARGET)
                    continue
                self._corpus_dump(engine, self.windows(k), self.out / f"{name}.corpus.safetensors", TARGET)
                self._layers(engine, k, self.out / f"{name}.layers.safetensors", TARGET)
                steps = int(self.modes["max_tokens"])
                # the decode dump's decode (one batch where it fits) and the batch mode's base (each prompt alone)
                for kind, alone in (("decode", False), ("base", True)):
                    write_decode_dump(self.out / f"{name}.{kind}.safetensors",
                                      decode_rows(engine, self.workload(k), steps, self.storage, alone=alone),
                                      self._meta(TARGET), steps, self.storage)
                decoded, held = decode_rows(engine, self.batch(k), steps, self.storage, together=True)
                write_decode_dump(self.out / f"{name}.batch.safetensors", (decoded[: int(self.modes["prompts"])], held),
                                  self._meta(TARGET), steps, self.storage)
            _switch(engine, None)

    # -- the checks ----------------------------------------------------------------------------------------------

    def _compare_corpus(self, k: int, path: Path, floor: bool = False) -> dict:
        return compare_corpus_files(self.out / f"{REFERENCE}.{k}.corpus.safetensors", path,
                                    self.compare["thresholds"], self.compare["tie_tolerance"], self.positions,
                                    floor_path=self.out / f"{FLOOR_TARGET}.{k}.corpus.safetensors" if floor else None)

    def checks(self, name: str, k: int) -> dict[str, Any]:
        corpus = self._compare_corpus(k, self.out / f"{name}.corpus.safetensors", floor=True)
        corpus_json = self.out / f"{name}.corpus.json"
        corpus_json.write_text(json.dumps(corpus), encoding="utf-8")
        decode = self._compare_decode(name, "decode", corpus_json)
        batch = self._compare_decode(name, "batch", corpus_json)
        base = self._compare_decode(name, "base", corpus_json)
        chunked = self._compare_corpus(k, self.out / f"{name}.chunked.safetensors", floor=True)
        layers = compare_layers_files(self.out / f"{REFERENCE}.{k}.layers.safetensors",
                                      self.out / f"{name}.layers.safetensors", self.config["layers"],
                                      self.positions["bucket"], self.out / f"{FLOOR_TARGET}.{k}.layers.safetensors")
        results = {
            "corpus": corpus["pooled"], "corpus growth": corpus["growth"], "corpus vs floor": corpus["vs_floor"],
            "decode": decode["pooled"], "decode growth": decode["growth"],
            "decode vs prefill": decode["decode_vs_prefill"], "decode vs floor": decode["vs_floor"],
            "chunked": chunked["pooled"], "chunked growth": chunked["growth"], "chunked vs floor": chunked["vs_floor"],
            "chunked vs base": mode_vs_base(chunked, corpus, self.positions),
            "batch": batch["pooled"], "batch vs base": mode_vs_base(batch, base, self.positions),
        }
        floor = layers.get("floor") or {}
        return {
            "kld_mean": {"corpus": corpus["overall"]["kld_mean"], "decode": decode["overall"]["kld_mean"],
                         "chunked": chunked["overall"]["kld_mean"], "batch": batch["overall"]["kld_mean"]},
            # the floor's KLD on the tokens each run decoded (batch's vs-floor check is not one of CHECKS)
            "floor_kld_mean": {"decode": decode["vs_floor"]["kld_floor"], "batch": batch["vs_floor"]["kld_floor"]},
            "checks": {check: _outcome(result) for check, result in results.items()},
            # the per-layer comparison localises; it is not part of the verdict
            "layers": {"over_floor": floor.get("status"), "first_over": (floor.get("first_over") or {}).get("name"),
                       "largest_multiple": (floor.get("largest") or {}).get("floor_multiple"),
                       "first_divergent": (layers.get("first_divergent") or {}).get("name")},
        }

    def _compare_decode(self, name: str, kind: str, prefill_json: Path) -> dict:
        """The run's decoded tokens scored by the reference and by the bf16 floor (score_decode, as the workflow's
        score_decode and score_decode_floor), compared as compare_decode does, with the vs-floor check."""
        path = self.out / f"{name}.{kind}.safetensors"
        scored = {target: self.out / f"{name}.{kind}.{side}.safetensors"
                  for target, side in ((REFERENCE, "reference"), (FLOOR_TARGET, "floor"))}
        for target, out in scored.items():
            score_decode(target, self.model_dir, EngineSettings(threads=1), path, out, self.config.get("logits"))
        return compare_decode_files(scored[REFERENCE], path, self.compare["thresholds"], self.compare["tie_tolerance"],
                                    self.positions, prefill_json, scored[FLOOR_TARGET])


def _outcome(result: dict) -> dict[str, Any]:
    """A check's status and, where it is a ratio or a threshold verdict, what it measured."""
    status = result.get("status")
    outcome = {"status": status}
    if "ratio" in result:
        outcome.update(ratio=result.get("ratio"), ratio_lower=result.get("ratio_lower"))
    reasons = result.get("reasons") or ([result["reason"]] if result.get("reason") else [])
    if reasons:
        outcome["reasons"] = reasons[:3]
    return outcome


def calibrate(model_dir: str | Path, config: dict, out_dir: str | Path, short: bool = False,
              base_dir: str | Path = ".", model_label: str | None = None) -> dict[str, Any]:
    started = time.perf_counter()
    chosen, clean_runs = plan(short)
    calibration = Calibration(model_dir, config, out_dir, base_dir)
    floors = calibration.score_reference(clean_runs)
    runs = [(f"clean-{k}", k, None) for k in range(clean_runs)] + [(f"fault-{f}", 0, f) for f in chosen]
    engine_started = time.perf_counter()
    calibration.run_target(runs, chunked=False)
    calibration.run_target(runs, chunked=True)
    engine_seconds = time.perf_counter() - engine_started
    measured = {name: {"fault": fault, "window_set": k, **calibration.checks(name, k)} for name, k, fault in runs}
    for run in measured.values():
        unit = {"corpus": floors[run["window_set"]], "chunked": floors[run["window_set"]], **run["floor_kld_mean"]}
        run["floor_multiple"] = {kind: (value / unit[kind] if value is not None and unit[kind] else None)
                                 for kind, value in run["kld_mean"].items()}
    return {
        "target": TARGET, "reference": REFERENCE, "floor": FLOOR_TARGET, "short": short,
        "model": model_label or Path(model_dir).name, "date": datetime.date.today().isoformat(), "host": host(),
        "floor_kld_mean": floors, "runs": measured,
        "false_failures": false_failures([r for r in measured.values() if r["fault"] is None]),
        "detection": detection([r for r in measured.values() if r["fault"] is not None]),
        "seconds": {"total": round(time.perf_counter() - started, 1), "target_engines": round(engine_seconds, 1)},
    }


def host() -> dict[str, Any]:
    """The machine and stack that measured the record: the embedded model is built on each host, and hosts whose float
    kernels differ build slightly different weights, so a check near its threshold can flip between them."""
    return {"cpu": cpu_model(), "float_kernel_flags": float_kernel_flags(),
            **{key: distribution_version(*STACK_DISTRIBUTIONS[key]) for key in ("torch", "vllm")}}


def false_failures(clean: list[dict]) -> dict[str, dict]:
    counts = {check: {"runs": len(clean), "failed": sum(r["checks"][check]["status"] == "fail" for r in clean),
                      "inconclusive": sum(r["checks"][check]["status"] == "inconclusive" for r in clean)}
              for check in CHECKS}
    counts[LAYERS] = {"runs": len(clean), "failed": sum(r["layers"]["over_floor"] == "over" for r in clean),
                      "inconclusive": sum(r["layers"]["over_floor"] == "unknown" for r in clean)}
    return counts


def detection(fault_runs: list[dict]) -> list[dict]:
    """One row per fault run: its size in floor multiples, the checks that failed and those left inconclusive."""
    rows = []
    for run in fault_runs:
        failed, unsure = ([check for check in CHECKS if run["checks"][check]["status"] == status]
                          for status in ("fail", "inconclusive"))
        multiples = {kind: value for kind, value in run["floor_multiple"].items() if value is not None}
        rows.append({"fault": run["fault"], "what": faults.CLASSES[faults.parse(run["fault"]).name].what,
                     "layers": run["layers"],
                     "largest_floor_multiple": max(multiples.values()) if multiples else None,
                     "floor_multiple": run["floor_multiple"], "caught_by": failed, "caught": bool(failed),
                     "inconclusive_on": unsure,
                     "should_be_caught": bool(multiples) and max(multiples.values()) >= 3.0})
    return rows


def table(record: dict) -> str:
    """The detection table in markdown (the README and the report cite it)."""
    lines = ["| fault | KLD / bf16 floor (corpus, decode, chunked, batch) | caught by | first layer over the floor |",
             "|---|---|---|---|"]
    for row in record["detection"]:
        m = row["floor_multiple"]
        sizes = ", ".join("-" if m[k] is None else f"{m[k]:.1f}x" for k in ("corpus", "decode", "chunked", "batch"))
        lines.append(f"| `{row['fault']}` | {sizes} | {faults.caught_text(row)} | "
                     f"{row['layers']['first_over'] or '-'} |")
    lines += ["", "| check | false failures | inconclusive |", "|---|---|---|"]
    for check, counts in record["false_failures"].items():
        lines.append(f"| {check} | {counts['failed']} of {counts['runs']} | {counts['inconclusive']} |")
    return "\n".join(lines) + "\n"


def write(record: dict, out: Path) -> None:
    with atomic_path(out / "detection.json") as tmp:
        tmp.write_text(json.dumps(record, indent=1, default=str), encoding="utf-8")
    with atomic_path(out / "detection.md") as tmp:
        tmp.write_text(table(record), encoding="utf-8")
