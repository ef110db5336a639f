"""Make Snakemake rebuild artifacts the report stands on that are absent or not what their rule wrote.

Snakemake does not rerun the job of a missing intermediate file while the final target is up to date, nor notice
an artifact edited after its job (a newer mtime reruns the readers, which then read the edit). So while the workflow
is parsed, portcheck checks the report's artifacts against the hashes recorded when they were written
(portcheck.artifacts) and adds the damaged ones to Snakemake's `--forcerun` files: their jobs, and every job after
them, rerun, and a dry run shows it ("Forced execution")."""

from __future__ import annotations

import sys


def force_rebuild(workflow, files) -> None:
    """Add `files` to the run's --forcerun. Snakemake sets the run's DAG settings after parsing the workflow, so the
    files are added when they are set (or at once where they already are)."""
    files = frozenset(map(str, files))
    if not files:
        return
    if getattr(workflow, "dag_settings", None) is not None:
        _add(workflow.dag_settings, files)
        return
    if _FORCED not in workflow.__dict__:
        workflow.__class__ = _forcing_class(type(workflow))
    workflow.__dict__[_FORCED] = workflow.__dict__.get(_FORCED, frozenset()) | files


_FORCED = "_portcheck_forced_files"


def _add(settings, files) -> None:
    if settings is not None and files:
        settings.forcerun = frozenset({*settings.forcerun, *files})


def _forcing_class(base: type) -> type:
    """`base` whose dag_settings, when assigned, get the files to force added."""

    def get(self):
        return self.__dict__.get("dag_settings")

    def set_(self, settings):
        _add(settings, self.__dict__.get(_FORCED, frozenset()))
        self.__dict__["dag_settings"] = settings

    return type(f"Forcing{base.__name__}", (base,), {"dag_settings": property(get, set_)})


def rebuild_damaged(workflow, artifacts: list[str], report: str) -> None:
    """Force the jobs of the report's artifacts that were changed after their rule wrote them, and, once a report
    exists, of those that are absent (before the first report they are built anyway). Quick: a file whose size and
    mtime are those recorded is not hashed, so a no-op run stays one stat per artifact."""
    from pathlib import Path

    from portcheck.artifacts import damaged, describe_damage

    found = damaged(artifacts, quick=True, missing_ok=not Path(report).is_file())
    for line in describe_damage(found):
        print(f"portcheck: {line}; rebuilding it and what depends on it", file=sys.stderr)
    force_rebuild(workflow, found)
