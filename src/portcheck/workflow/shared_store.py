"""Several hosts, one results store (a Snakemake storage plugin: fs, s3). Two guards that keep the store whole:
the store must be reachable before any job runs, and a host does not overwrite a target's complete artifacts
that are already in the store unless asked (`--config overwrite=true`): Snakemake deletes a job's outputs from
storage before the job runs, so the check has to happen before the first job starts."""

from __future__ import annotations

import os
from pathlib import Path


def prefix_problem(provider: str | None, prefix: str | None) -> str | None:
    """Why the default storage prefix cannot hold results (fs only: other providers are checked by their plugin)."""
    if provider != "fs":
        return None
    if not prefix:
        return "the fs storage provider needs --default-storage-prefix (the shared directory, e.g. /shared/portcheck)"
    path = Path(prefix)
    if not path.is_dir():
        return (f"storage prefix {prefix} is unreachable: it is not an existing directory on this host; mount the "
                "shared store (or create it) and rerun, or fix default-storage-prefix in the profile")
    if not os.access(path, os.W_OK | os.X_OK):
        return f"storage prefix {prefix} is not writable by this user; fix its permissions or use another prefix"
    return None


def overwrite_message(conflicts: list[tuple[str, str, list[str]]]) -> str:
    """conflicts: (rule, target, [store paths that exist complete])."""
    lines = [f"  - {rule} for {target}: {', '.join(paths)}" for rule, target, paths in conflicts]
    return (
        "refusing to overwrite complete artifacts in the shared results store (another host or an earlier run "
        "made them; Snakemake would delete them before rerunning):\n" + "\n".join(lines) + "\n"
        "Nothing was changed. To reuse them, leave them be (disable these targets here, or run only what this host "
        "owns); to redo them from this host on purpose, add --config overwrite=true."
    )
