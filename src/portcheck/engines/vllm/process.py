"""The processes a vLLM engine runs in (EngineCore, and a worker under it; or this one, in-process): the
environment they start with, finding them, noticing when one dies, reaping them at close so another engine can
start here, and what an in-process engine changes in this process, put back at its close."""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Any, Callable

# Helper processes Python's multiprocessing starts once per interpreter (they outlive any one engine).
MULTIPROCESSING_HELPERS = ("multiprocessing.resource_tracker", "multiprocessing.forkserver", "semaphore_tracker")


@contextlib.contextmanager
def environ(values: dict[str, str]):
    """Set environment variables for the engine start (its processes inherit them), restored afterwards."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def child_processes() -> dict[int, Any]:
    """This process's descendants, except multiprocessing's shared helper processes."""
    try:
        import psutil
    except ImportError:  # vLLM depends on psutil; without it process tracking is skipped
        return {}
    found = {}
    for proc in psutil.Process().children(recursive=True):
        try:
            cmdline = " ".join(proc.cmdline())
        except psutil.Error:
            continue
        if not any(marker in cmdline for marker in MULTIPROCESSING_HELPERS):
            found[proc.pid] = proc
    return found


def started_since(before: dict[int, Any]) -> dict[int, Any]:
    """The child processes that were not there in `before` (a snapshot of child_processes())."""
    return {pid: proc for pid, proc in child_processes().items() if pid not in before}


def any_dead(processes: dict[int, Any]) -> bool:
    if not processes:
        return False
    import psutil

    for proc in processes.values():
        try:
            if not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.Error:
            return True
    return False


def reap(processes: dict[int, Any], timeout: float = 30.0) -> None:
    """Wait for the processes to exit; terminate, then kill, only those still running."""
    if not processes:
        return
    import psutil

    _, alive = psutil.wait_procs(list(processes.values()), timeout=timeout)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, alive = psutil.wait_procs(alive, timeout=10)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=10)


@contextlib.contextmanager
def watchdog(processes_dead: Callable[[], bool], engine_core: Callable[[], Any], interval: float = 1.0):
    """While the block runs, unblock every waiting LLM call when an engine process dies without a word (SIGKILL,
    OOM killer): vLLM's sync client waits with no timeout, and its own monitor marks the engine dead but leaves
    calls already in flight waiting forever."""
    stop = threading.Event()
    thread = threading.Thread(target=_watch, args=(stop, processes_dead, engine_core, interval),
                              name="portcheck-vllm-watchdog", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()


def _watch(stop: threading.Event, processes_dead: Callable[[], bool], engine_core: Callable[[], Any],
           interval: float) -> None:
    while not stop.wait(interval):
        try:
            dead = processes_dead()
        except Exception:  # noqa: BLE001 - the watchdog must never raise
            dead = False
        if dead:
            if not stop.is_set():
                fail_waiting_calls(engine_core())
            return


def engine_dead_error() -> Exception:
    try:
        from vllm.v1.engine.exceptions import EngineDeadError

        return EngineDeadError()
    except ImportError:
        return RuntimeError("a vLLM engine process died")


def fail_waiting_calls(engine_core: Any) -> None:
    """Make the calls waiting on a dead engine raise: requests wait on the client's output queue (generate,
    score), utility calls on futures in utility_results (collective_rpc: introspection, memory queries). Both are
    looked up, not assumed: a vLLM line without one of them has nothing there to unblock."""
    queue = getattr(engine_core, "outputs_queue", None)
    if queue is not None:
        queue.put_nowait(engine_dead_error())
    for future in list((getattr(engine_core, "utility_results", None) or {}).values()):
        if not future.done():
            future.set_exception(engine_dead_error())


def enter_in_process() -> dict[str, Any]:
    """Before an in-process engine starts: what it changes in this process, to put back at its close (vLLM's CPU
    worker replaces torch.set_num_threads with a function that refuses, and binds this process to its CPUs), and
    the fault plugin patched in for the fault the environment names (vLLM loads its plugins once per process, so
    a second engine here would not get it from vLLM)."""
    import torch

    from portcheck.faults import vllm_plugin

    saved = {"set_num_threads": torch.set_num_threads, "affinity": os.sched_getaffinity(0)}
    vllm_plugin.register()
    return saved


def restore_process_state(saved: dict[str, Any]) -> None:
    """Undo an in-process engine's changes (enter_in_process; the worker's GDN call counters, wrapped into vLLM's
    classes here), so a later engine or model in this process starts as the first did."""
    import torch

    from portcheck.engines.vllm import worker_extension
    from portcheck.faults import vllm_plugin

    worker_extension.uninstall_gdn_counters()  # wrapped over the plugin's patches: undone first
    torch.set_num_threads = saved["set_num_threads"]
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, saved["affinity"])
    vllm_plugin.unpatch()
