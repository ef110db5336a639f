"""The run history: every report run appends its key figures per target (verdict, KLD mean and p99, top-1
agreement, throughput at a fixed point, TTFT, TPOT) and the environment fingerprint (the versions that affect
each target's results) to a JSON-lines file under results/. The report shows the previous runs side by side and
flags changes beyond configurable tolerances ("after upgrading vllm_ascend 0.18.0 -> 0.23.0: TPOT -12%").

The history is a side record: nothing reads it but the report's History section, so deleting it loses nothing
else (the next report run starts a new one). A file that does not parse is set aside (renamed, never deleted)
and reported; the report still renders. JSON only, never pickle."""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import logging
import os
from pathlib import Path
from typing import Any

from portcheck.artifacts import read_artifact
from portcheck.errors import PortcheckError
from portcheck.workflow.version_params import affecting

log = logging.getLogger(__name__)

SCHEMA = 1
HISTORY_NAME = "history.jsonl"
# name, label, better ("lower" | "higher"), tolerance kind ("relative" | "absolute")
FIGURES = (
    ("kld_mean", "KLD mean", "lower", "relative"),
    ("kld_p99", "KLD p99", "lower", "relative"),
    ("top1_agreement", "top-1 agreement", "higher", "absolute"),
    ("throughput_tok_s", "throughput (output tok/s)", "higher", "relative"),
    ("ttft_s", "TTFT", "lower", "relative"),
    ("tpot_s", "TPOT", "lower", "relative"),
)
SHORT = {"kld_mean": "KLD", "kld_p99": "KLD p99", "top1_agreement": "top-1", "throughput_tok_s": "throughput",
         "ttft_s": "TTFT", "tpot_s": "TPOT"}


class HistoryProblem(Exception):
    """The history file exists but is not a valid history."""


# ---------------------------------------------------------------- figures from artifacts


def _optional_artifact(path, kind: str) -> Any:
    """The history never fails the report: an absent or unreadable artifact gives no figures."""
    if not path:
        return None
    try:
        return read_artifact(path, kind)
    except PortcheckError:
        return None


def throughput_at(bench: dict | None, batch_size: int, max_tokens: int | None) -> tuple[float | None, str | None]:
    """Output tok/s of the bench grid cell (batch_size, max_tokens); max_tokens None = the longest measured."""
    if not isinstance(bench, dict):
        return None, None
    rows = [r for table in bench.get("throughput") or [] for r in (table.get("rows") or [])
            if isinstance(r, dict) and r.get("batch_size") == batch_size and not r.get("skipped")
            and (max_tokens is None or r.get("max_tokens") == max_tokens)]
    if not rows:
        return None, None
    row = max(rows, key=lambda r: r.get("max_tokens") or 0)
    return row.get("output_tok_s"), f"batch {batch_size} x {row.get('max_tokens')} tokens"


def latency_figure(bench: dict | None, name: str, statistic: str = "p50") -> float | None:
    value = ((bench or {}).get("latency") or {}).get(name) if isinstance(bench, dict) else None
    return value.get(statistic) if isinstance(value, dict) else None


def target_figures(compare: dict | None, bench: dict | None, point: dict) -> dict[str, Any]:
    c = compare or {}
    status = (c.get("verdict") or {}).get("status") if compare is not None else None
    throughput, where = throughput_at(bench, point["batch_size"], point["max_tokens"])
    return {
        "verdict": status,
        "kld_mean": c.get("kld_mean"),
        "kld_p99": c.get("kld_p99"),
        "top1_agreement": c.get("top1_agreement"),
        "throughput_tok_s": throughput,
        "throughput_point": where,
        "ttft_s": latency_figure(bench, "ttft_s"),
        "tpot_s": latency_figure(bench, "tpot_s"),
    }


def fingerprint(target: str, env: dict | None, meta: dict | None = None) -> dict[str, Any]:
    """The versions that affect `target` as its env capture (or dump) recorded them, plus where it ran."""
    versions = dict((env or {}).get("versions") or (meta or {}).get("versions") or {})
    keep = affecting(target)
    return {
        "versions": {k: versions.get(k) for k in keep},
        "host_cpu": (env or {}).get("cpu"),
        "workflow_commit": (env or {}).get("workflow_commit"),
    }


def build_record(artifacts: dict, history_config: dict, now: _dt.datetime | None = None) -> dict:
    """One history record from the report's artifacts (the dict render_report builds)."""
    point = history_config["throughput_point"]
    targets = {}
    for name, paths in artifacts["targets"].items():
        env = _optional_artifact(paths.get("env"), "env")
        compare = _optional_artifact((artifacts.get("compare") or {}).get(name), "compare")
        figures = target_figures(compare, _optional_artifact(paths.get("bench"), "bench"), point)
        if name == artifacts["reference"]:
            figures["verdict"] = "reference"
        bench_off = ((artifacts.get("turned_off_by") or {}).get(name) or {}).get("bench")
        if bench_off:  # not benchmarked by choice (bench.reference): the section says so, not "—"
            figures["bench_not_run"] = bench_off
        targets[name] = {**figures, **fingerprint(name, env)}
    stamp = (now or _dt.datetime.now(_dt.timezone.utc)).replace(microsecond=0)
    return {"schema": SCHEMA, "recorded_at": stamp.isoformat(), "model": artifacts["model"],
            "reference": artifacts["reference"], "targets": targets}


# ---------------------------------------------------------------- the file


def _same_run(a: dict, b: dict) -> bool:
    strip = lambda r: {k: v for k, v in r.items() if k != "recorded_at"}  # noqa: E731
    return strip(a) == strip(b)


def parse(text: str, path: str | os.PathLike = HISTORY_NAME) -> list[dict]:
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise HistoryProblem(f"{path} line {number} is not JSON ({exc})") from exc
        if not isinstance(record, dict) or not isinstance(record.get("targets"), dict):
            raise HistoryProblem(f"{path} line {number} is not a history record (no 'targets' mapping)")
        records.append(record)
    return records


def set_aside(path: Path, now: _dt.datetime | None = None) -> Path:
    """Rename a bad history file beside itself (never delete it): history.jsonl.corrupt-<UTC time>[-n]."""
    stamp = (now or _dt.datetime.now(_dt.timezone.utc)).strftime("%Y%m%dT%H%M%SZ")
    dest = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while dest.exists():
        dest = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
        n += 1
    os.replace(path, dest)
    return dest


@contextlib.contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def load(path: str | os.PathLike) -> tuple[list[dict], str | None]:
    """(records, problem). A corrupt file is set aside and reported; a missing one is an empty history."""
    path = Path(path)
    if not path.is_file():
        return [], None
    try:
        return parse(path.read_text(encoding="utf-8"), path), None
    except (HistoryProblem, UnicodeDecodeError) as exc:
        moved = set_aside(path)
        message = f"the history file was corrupted ({exc}); it was set aside as {moved} and a new history started"
        log.warning(message)
        return [], message


def append(path: str | os.PathLike, record: dict) -> tuple[list[dict], str | None]:
    """Append `record` unless it repeats the last one (same figures and fingerprint: a re-render, e.g. after a
    template edit); return the whole history (oldest first) and a problem message if the old file was bad."""
    path = Path(path)
    with _locked(path):
        records, problem = load(path)
        if records and _same_run(records[-1], record):
            return records, problem
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, ensure_ascii=False, sort_keys=True, allow_nan=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        return records + [record], problem


# ---------------------------------------------------------------- comparing runs


def relative_change(old: Any, new: Any) -> float | None:
    if not (_number(old) and _number(new)) or old == 0:
        return None
    return (new - old) / abs(old)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def version_changes(old: dict, new: dict) -> list[str]:
    a, b = (old.get("versions") or {}), (new.get("versions") or {})
    return [f"{k} {a.get(k) or 'absent'} -> {b.get(k) or 'absent'}" for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k)]


def compare_target(old: dict, new: dict, tolerances: dict) -> dict:
    """Each figure's change from `old` to `new` and whether it is a regression / improvement beyond tolerance."""
    changes, regressions, improvements = [], [], []
    for name, label, better, kind in FIGURES:
        a, b = old.get(name), new.get(name)
        if not (_number(a) and _number(b)):
            continue
        tolerance = tolerances[name]
        delta = (b - a) if kind == "absolute" else relative_change(a, b)
        if delta is None:
            continue
        text = f"{SHORT[name]} {_signed(delta, kind)}"
        worse = delta > tolerance if better == "lower" else delta < -tolerance
        gain = delta < -tolerance if better == "lower" else delta > tolerance
        (regressions if worse else improvements if gain else changes).append(
            text if (worse or gain) else f"{SHORT[name]} unchanged")
    verdict_change = None
    if old.get("verdict") != new.get("verdict") and new.get("verdict") != "reference":
        verdict_change = f"verdict {old.get('verdict') or 'none'} -> {new.get('verdict') or 'none'}"
        if new.get("verdict") == "fail":
            regressions.insert(0, verdict_change)
    return {"versions": version_changes(old, new), "regressions": regressions, "improvements": improvements,
            "unchanged": changes, "verdict_change": verdict_change}


def _signed(delta: float, kind: str) -> str:
    if kind == "absolute":
        return f"{delta * 100:+.2f} pp"
    return f"{delta * 100:+.0f}%" if abs(delta) >= 0.01 else f"{delta * 100:+.2f}%"


def findings(previous: dict, current: dict, tolerances: dict) -> list[dict]:
    """One finding per target present in both runs: a sentence and whether it flags a regression."""
    out = []
    for name, new in current.get("targets", {}).items():
        old = (previous.get("targets") or {}).get(name)
        if old is None:
            continue
        result = compare_target(old, new, tolerances)
        parts = result["regressions"] + result["improvements"] + result["unchanged"]
        if result["verdict_change"] and result["verdict_change"] not in parts:
            parts.insert(0, result["verdict_change"])
        if not parts and not result["versions"]:
            continue
        lead = f"after upgrading {', '.join(result['versions'])}" if result["versions"] else "same versions"
        sentence = f"{name}: {lead}: {', '.join(parts) or 'no comparable figures'}"
        out.append({"target": name, "regression": bool(result["regressions"]), "text": sentence,
                    "regressions": result["regressions"]})
    return out


# ---------------------------------------------------------------- the report's section


def _fmt(name: str, value: Any) -> str:
    if value is None:
        return "—"
    if name in ("kld_mean", "kld_p99"):
        return "0" if value == 0 else f"{value:.2e}"
    if name == "top1_agreement":
        return f"{value * 100:.2f}%"
    if name in ("ttft_s", "tpot_s"):
        return f"{value * 1000:.1f} ms"
    if name == "throughput_tok_s":
        return f"{value:.1f}"
    return str(value)


# The figures read from bench.json: "not run (<setting>)" in a run whose config did not benchmark the target.
BENCH_FIGURES = ("throughput_tok_s", "ttft_s", "tpot_s")


def _turned_off(cell: dict, name: str) -> str | None:
    return cell.get("bench_not_run") if name in BENCH_FIGURES and cell.get(name) is None else None


def _cell(cell: dict | None, name: str) -> str:
    if not cell:
        return "not run"
    reason = _turned_off(cell, name)
    return f"not run ({reason})" if reason else _fmt(name, cell.get(name))


def section(records: list[dict], tolerances: dict, show_runs: int, problem: str | None = None) -> dict:
    """Side-by-side table of the last `show_runs` runs (oldest left, this run right) and the findings of this
    run against the previous one."""
    shown = records[-show_runs:] if show_runs else records
    header = ["Target", "Figure"] + [f"run {len(records) - len(shown) + i + 1} ({r.get('recorded_at', '?')})"
                                     for i, r in enumerate(shown)]
    targets = list(dict.fromkeys(t for r in shown for t in r.get("targets", {})))
    rows = []
    for t in targets:
        cells = [(r.get("targets") or {}).get(t) for r in shown]
        rows.append([t, "verdict"] + [(c or {}).get("verdict") or "—" if c else "not run" for c in cells])
        for name, label, _, _ in FIGURES:
            if any(c and (c.get(name) is not None or _turned_off(c, name)) for c in cells):
                rows.append([t, label] + [_cell(c, name) for c in cells])
        rows.append([t, "versions"] + [", ".join(f"{k} {v}" for k, v in sorted((c.get("versions") or {}).items())
                                                 if v) or "—" if c else "not run" for c in cells])
    found = findings(records[-2], records[-1], tolerances) if len(records) >= 2 else []
    return {"runs": len(records), "shown": len(shown), "table": {"header": header, "rows": rows},
            "findings": found, "regressions": [f for f in found if f["regression"]], "problem": problem,
            "tolerances": {name: tolerances[name] for name, *_ in FIGURES}}


def record_and_section(path: str | os.PathLike, artifacts: dict, history_config: dict) -> dict:
    """Append this run to the history at `path` and return the report's History section. `history_config` is
    the validated config's `history` (its defaults come from the schema)."""
    record = build_record(artifacts, history_config)
    records, problem = append(path, record)
    result = section(records, history_config["tolerances"], history_config["show_runs"], problem)
    result["path"] = str(path)
    return result

