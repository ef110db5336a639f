"""One engine start for two jobs whose caching stays separate. A job that already has an engine up does a sibling
job's work on it and leaves the result here, under the exact request the sibling will make: the sibling's params,
the content of the inputs it reads and the package code it runs. When Snakemake runs the sibling, it takes the
result only if its own request is equal, key for key; on any difference (a changed setting, an edited input, new
code, a different installed version) it does the work itself, as it always did. A change to one job's settings
therefore reruns only that job, and a stale hand-off is never taken.

One file per (rule, target), JSON, written atomically: a newer deposit replaces the older one. The record's SHA-256
is kept beside it: a record edited after it was written is not taken (the sibling does its own work)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from portcheck.atomic import write_json
from portcheck.hashing import sha256_file, sha256_json
from portcheck.workflow.code_inputs import PACKAGE_DIR, module_closure

log = logging.getLogger(__name__)


def make_request(rule: str, target: str, params: dict, inputs: dict[str, str | Path | list],
                 modules: Iterable[str]) -> dict:
    """What a job's result depends on: its params (as JSON), the SHA-256 of each named input's files (by name, not
    path: the two jobs may see the package from different places) and of each package file that `modules` import
    (their closure, both engines included: a wider key only costs a miss)."""
    return {"rule": rule, "target": target, "params": json.loads(json.dumps(params, sort_keys=True)),
            "inputs": {name: [sha256_file(path) for path in ([paths] if isinstance(paths, (str, Path)) else paths)]
                       for name, paths in sorted(inputs.items())},
            "code": {str(path.relative_to(PACKAGE_DIR)): sha256_file(path) for path in module_closure(*modules)}}


def handoff_path(store: str | Path, request: dict) -> Path:
    return Path(store) / request["rule"] / f"{request['target']}.json"


def deposit(store: str | Path, request: dict, record: dict) -> Path:
    path = handoff_path(store, request)
    write_json(path, {"request": request, "record": record, "record_sha256": sha256_json(record)})
    return path


def offer(store: str | Path, request: dict, produce: Callable[[Any], dict]) -> dict[str, Callable[[Any], None]]:
    """A job's offer to do a sibling's work on its engine: {the sibling's rule: work(engine)}, which deposits what
    `produce(engine)` returns under `request`; {} where the store already holds this exact request's result."""
    if holds(store, request):
        return {}
    return {request["rule"]: lambda engine: deposit(store, request, produce(engine))}


def holds(store: str | Path, request: dict) -> bool:
    """Whether the store already has this exact request's result (the depositor need not redo it)."""
    return _stored(store, request) is not None


def take(store: str | Path, request: dict) -> dict | None:
    """The result deposited for exactly this request, or None (nothing there, or made for another request: which
    part differed is logged)."""
    return _stored(store, request, explain=True)


def _stored(store, request: dict, explain: bool = False) -> dict | None:
    path = handoff_path(store, request)
    try:
        stored: Any = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        log.warning("hand-off %s unreadable (%s): doing the work here", path, error)
        return None
    if not isinstance(stored, dict) or stored.get("request") != request:
        if explain:
            differs = sorted(key for key in request if not isinstance(stored, dict)
                             or (stored.get("request") or {}).get(key) != request[key])
            log.info("hand-off %s was made for another request (%s differ): doing the work here", path,
                     ", ".join(differs) or "its layout")
        return None
    if sha256_json(stored.get("record")) != stored.get("record_sha256"):
        log.warning("hand-off %s was edited after it was written: doing the work here", path)
        return None
    return stored["record"]


def do_work(name: str, work: Callable[[Any], None], engine: Any) -> dict[str, Any]:
    """A sibling job's work on this job's engine (a server's port, an engine object): timed; a failure is logged
    and reported, not raised: this job's own results stand, and the sibling does its own work."""
    started = time.perf_counter()
    try:
        work(engine)
    except Exception as error:
        log.warning("%s on this engine failed (%s: %s); that job will start its own", name, type(error).__name__,
                    error)
        return {"status": "failed", "error": f"{type(error).__name__}: {error}"}
    return {"status": "ok", "seconds": round(time.perf_counter() - started, 3)}
