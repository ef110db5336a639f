"""What every workflow/scripts adapter shares: the job's log, a clean error for problems users can fix, and the
hand-over to the target's own Python environment (params.python_env, portcheck.env.python_env).

A job whose environment is not the one running snakemake is run again by that environment's interpreter:
`python -m portcheck.workflow.script <job.json>`, the job's files, params and wildcards written as JSON (no pickle),
the adapter loaded from workflow/scripts/<rule>.py and its `main` called on the same fields."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Callable

JOB_FIELDS = ("input", "output", "log", "params", "wildcards")


def run_script(snakemake, main: Callable) -> None:
    """Run `main(snakemake)` with stdout, stderr and logging going to the job's log file, in the job's Python
    environment. A PortcheckError is written to the log and to the terminal without a traceback, and fails the job."""
    env_dir = getattr(snakemake.params, "python_env", None)
    if env_dir:
        from portcheck.env import python_env

        if not python_env.runs_here(env_dir):
            sys.exit(run_in_environment(snakemake, env_dir, adapter_path(snakemake, main)))
    run_logged(snakemake, main)


def run_logged(snakemake, main: Callable) -> None:
    from portcheck.errors import PortcheckError

    log_path = snakemake.log[0] if snakemake.log else None
    with open(log_path, "a", encoding="utf-8") if log_path else contextlib.nullcontext(sys.stderr) as log:
        handler = logging.StreamHandler(log)
        logging.getLogger().addHandler(handler)
        logging.getLogger().setLevel(logging.INFO)
        try:
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                check_inputs(snakemake)
                main(snakemake)
                record_outputs(snakemake)
        except PortcheckError as error:
            message = f"portcheck: {error}"
            print(message, file=log)
            print(message, file=sys.__stderr__)
            sys.exit(1)
        except BaseException:
            traceback.print_exc(file=log)
            raise
        finally:
            logging.getLogger().removeHandler(handler)


def check_inputs(snakemake) -> None:
    """A job never reads an artifact that differs from what its rule wrote (an edit after the fact, a copy cut
    short): refused, naming the file and the command that rebuilds it."""
    from portcheck.artifacts import check_artifacts

    check_artifacts([path for path in snakemake.input if Path(path).is_file()], f"rule {snakemake.rule}")


def record_outputs(snakemake) -> None:
    """Each output's hash, recorded beside it, for the readers to check (portcheck.artifacts)."""
    from portcheck.artifacts import record_hash

    for path in snakemake.output:
        record_hash(path, snakemake.rule)


def adapter_path(snakemake, main: Callable) -> Path:
    """The adapter file that defines `main`: Snakemake runs a copy named tmp<random>.<script name> next to the
    job, so the script's own name is after the first dot; the rule's name is the fallback (rule = script name)."""
    copy_name = Path(main.__code__.co_filename).name
    names = [copy_name.split(".", 1)[1]] if copy_name.startswith("tmp") and "." in copy_name else []
    for name in (*names, copy_name, f"{snakemake.rule}.py"):
        if (Path(snakemake.scriptdir) / name).is_file():
            return Path(snakemake.scriptdir) / name
    raise RuntimeError(f"the adapter script of rule {snakemake.rule} is not found in {snakemake.scriptdir}")


def job_record(snakemake, adapter: Path) -> dict:
    """The job as JSON: each named list as its items in order plus its names; threads, rule, adapter path."""
    record = {field: _named_list(getattr(snakemake, field)) for field in JOB_FIELDS}
    record.update(threads=snakemake.threads, rule=snakemake.rule, scriptdir=str(snakemake.scriptdir),
                  adapter=str(adapter))
    return record


def _named_list(values) -> dict:
    names = dict(values.items()) if hasattr(values, "items") else {}
    return {"items": list(values), "names": names}


def engine_target(snakemake):
    """The target whose engine the job starts: the reference's for the scoring rules (params.reference), else the
    job's target wildcard; None for a job of no target."""
    from portcheck.targets import parse_target

    running = getattr(snakemake.params, "reference", None) or dict(snakemake.wildcards.items()).get("target")
    return parse_target(running) if running else None


def run_in_environment(snakemake, env_dir: str, adapter: Path) -> int:
    """Run the job by the environment's interpreter; its exit status (the child writes the job's log itself)."""
    from portcheck.env import python_env

    described = python_env.probe(str(env_dir))
    target = engine_target(snakemake)
    preload = []
    if target and target.engine == "vllm" and target.device == "cpu":
        preload = python_env.cpu_vllm_preload(env_dir)
    with tempfile.NamedTemporaryFile("w", suffix=".job.json", delete=False) as handle:
        json.dump(job_record(snakemake, adapter), handle)
    try:
        with open(snakemake.log[0], "a", encoding="utf-8") if snakemake.log else contextlib.nullcontext() as log:
            if log:
                print(f"portcheck: running in {env_dir} (Python {described.get('python')}); LD_PRELOAD adds "
                      f"{preload or 'nothing'}", file=log)
        command = [str(python_env.interpreter(env_dir)), "-m", "portcheck.workflow.script", handle.name]
        return subprocess.run(command, env=python_env.job_environment({}, preload), check=False).returncode
    finally:
        Path(handle.name).unlink(missing_ok=True)


class JobList(list):
    """A Snakemake named list rebuilt from JSON: items by position, by attribute and by key."""

    def __init__(self, record: dict):
        super().__init__(record["items"])
        self._names = dict(record["names"])

    def __getattr__(self, name):
        try:
            return self._names[name]
        except KeyError:
            raise AttributeError(name) from None

    def __getitem__(self, key):
        return self._names[key] if isinstance(key, str) else super().__getitem__(key)

    def keys(self):
        return self._names.keys()

    def items(self):
        return self._names.items()

    def get(self, key, default=None):
        return self._names.get(key, default)


class Job:
    """What an adapter reads of the `snakemake` object, rebuilt from job_record()."""

    def __init__(self, record: dict):
        for field in JOB_FIELDS:
            setattr(self, field, JobList(record[field]))
        self.threads, self.rule, self.scriptdir = record["threads"], record["rule"], record["scriptdir"]


def run_job_file(path: str) -> None:
    record = json.loads(Path(path).read_text(encoding="utf-8"))
    spec = importlib.util.spec_from_file_location(f"portcheck_adapter_{record['rule']}", record["adapter"])
    adapter = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(adapter)  # the adapter's `if __name__ == "__main__"` block does not run
    run_logged(Job(record), adapter.main)


# vLLM's engine may spawn processes that re-import this module: only the main process runs the job.
if __name__ == "__main__":
    run_job_file(sys.argv[1])
