"""profiles/slurm on a real Slurm (`make test-slurm`: scripts/slurm_cluster.sh starts a single node with cpu, gpu and
npu partitions, accounting through slurmdbd). The workflow runs on the CI config once through the SLURM executor
plugin (.venv-slurm) and once locally; its jobs must be submitted and accounted with the profile's placement, and
the comparisons must equal the local run's. GPU/NPU jobs cannot run here (no devices): their placement is checked
from the plan (dry run) with the plugin's own option mapping, and Slurm allocates a placeholder job with exactly
those options. Bad input: an unknown partition or account fails with Slurm's / the plugin's message and no result
is lost.

The `slurm` tests skip unless SLURM_CONF names a cluster that answers `sinfo`; the profile check at the top runs in
the ordinary suite."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, copy_workflow

SLURM_VENV = ROOT / ".venv-slurm"
CONFIG = ROOT / ".test" / "config.yaml"
PROFILE = ROOT / "profiles" / "slurm" / "config.yaml"
MODEL = "tiny-qwen3.5"
CORES = "2"
TIMEOUT = 3600


def device_rules() -> set[str]:
    """Rules whose gpu/npu resources follow the target (device_resources(...)) in rules/*.smk, and the rules made
    from one of them by `use rule <it> as <name>` (they inherit its resources)."""
    names, derived = set(), []
    for path in (ROOT / "rules").glob("*.smk"):
        rule = None
        for line in path.read_text().splitlines():
            if m := re.match(r"rule (\w+):", line):
                rule = m.group(1)
            elif m := re.match(r"\s*use rule (\w+) as (\w+)", line):
                derived.append(m.groups())
            elif rule and re.search(r"\b(gpu|npu)=device_resources\(", line):
                names.add(rule)
    return names | {name for base, name in derived if base in names}


def test_profile_places_every_device_rule():
    """The profile sends to a device partition exactly the rules that run a target's engine on its device."""
    profile = yaml.safe_load(PROFILE.read_text())
    assert set(profile["set-resources"]) == device_rules()


def cluster_answers() -> bool:
    conf = os.environ.get("SLURM_CONF")
    if not shutil.which("sinfo") or not conf or not Path(conf).is_file():
        return False
    try:
        return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=20).returncode == 0
    except subprocess.TimeoutExpired:
        return False


needs_cluster = [
    pytest.mark.slurm,
    pytest.mark.skipif(not cluster_answers(), reason="no Slurm cluster (SLURM_CONF unset or not answering): "
                                                     "make test-slurm starts one"),
]


def slurm_env(**extra: str) -> dict[str, str]:
    # Jobs inherit this environment (sbatch --export=ALL): their `python` is .venv's with the jobstep plugin.
    path = f"{SLURM_VENV / 'job-bin'}:{Path(sys.executable).parent}:{os.environ['PATH']}"
    return {**os.environ, "PATH": path, "PORTCHECK_SLURM_ACCOUNT": "portcheck", **extra}


def slurm_snakemake(workdir: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    cmd = [str(SLURM_VENV / "bin" / "snakemake"), "report", "--profile", str(workdir / "profiles" / "slurm"),
           "--cores", CORES, "--slurm-init-seconds-before-status-checks", "5", "--configfile", str(CONFIG), *args]
    return subprocess.Popen(cmd, cwd=workdir, env=env or slurm_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen, what: str, check: bool = True) -> str:
    out, _ = proc.communicate(timeout=TIMEOUT)
    if check and proc.returncode != 0:
        raise AssertionError(f"{what} failed ({proc.returncode}):\n{out[-8000:]}")
    return out


def sacct(job_ids: list[str]) -> list[dict[str, str]]:
    fields = ["JobID", "Partition", "Account", "AllocTRES", "State", "Comment"]
    for _ in range(30):  # slurmctld hands finished jobs to slurmdbd asynchronously
        out = subprocess.run(["sacct", "-X", "-n", "--parsable2", "-j", ",".join(job_ids), "-o", ",".join(fields)],
                             capture_output=True, text=True, check=True).stdout
        rows = [dict(zip(fields, line.split("|"))) for line in out.splitlines() if line]
        # A finished job's row can come before its partition does: wait for both.
        if len(rows) == len(job_ids) and all(r["State"] not in ("PENDING", "RUNNING") and r["Partition"]
                                             for r in rows):
            return rows
        time.sleep(1)
    return rows


def without_timings(record):
    """A comparison record less its timings (keys ending in "seconds", such as a vision tower's encode_seconds):
    they differ between any two runs."""
    if isinstance(record, dict):
        return {key: without_timings(value) for key, value in record.items() if not key.endswith("seconds")}
    return [without_timings(value) for value in record] if isinstance(record, list) else record


def tree_digest(workdir: Path) -> dict[str, str]:
    return {str(p.relative_to(workdir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for top in ("results", "reports") for p in sorted((workdir / top).rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The CI config through profiles/slurm and locally, at the same time (same threads: --cores 2)."""
    base = tmp_path_factory.mktemp("slurm")
    local, slurm = copy_workflow(base / "local"), copy_workflow(base / "slurm")
    start = time.monotonic()
    local_proc = subprocess.Popen(
        [sys.executable, "-m", "snakemake", "report", "--cores", CORES, "--configfile", str(CONFIG)],
        cwd=local, env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    slurm_proc = slurm_snakemake(slurm)
    slurm_out = finish(slurm_proc, "the run through profiles/slurm")
    print(f"\n[slurm] workflow through profiles/slurm: {time.monotonic() - start:.0f} s", file=sys.stderr)
    finish(local_proc, "the local run")
    print(f"[slurm] both runs: {time.monotonic() - start:.0f} s", file=sys.stderr)
    return {"local": local, "slurm": slurm, "slurm_out": slurm_out}


class TestOnCluster:
    pytestmark = needs_cluster

    def test_jobs_were_submitted_and_accounted_on_the_cpu_partition(self, runs):
        submitted = re.findall(r"Job (\d+) has been submitted with SLURM jobid (\d+)", runs["slurm_out"])
        job_ids = [slurm_id for _, slurm_id in submitted]
        planned = re.search(r"Job stats:.*?\n\s*total\s+(\d+)", runs["slurm_out"], re.S)
        # every job but the local aggregate `report` went through sbatch
        assert planned and len(job_ids) == int(planned.group(1)) - 1, runs["slurm_out"][-4000:]
        rows = sacct(job_ids)
        print("\n[slurm] sacct -X " + " ".join(f"{k:>10}" for k in rows[0]), file=sys.stderr)
        for row in rows:
            print("[slurm]          " + " | ".join(row.values()), file=sys.stderr)
        assert len(rows) == len(job_ids)
        assert {r["State"] for r in rows} == {"COMPLETED"}
        assert {r["Account"] for r in rows} == {"portcheck"}  # the account the plugin validated (sacctmgr)
        assert {r["Partition"] for r in rows} == {"cpu"}  # CPU targets: every job on the cpu partition
        assert not [r for r in rows if "gres/" in r["AllocTRES"]]  # and none holds a GRES
        rules = {re.sub(r"_wildcards_.*", "", r["Comment"]).removeprefix("rule_") for r in rows}
        assert {"dump_logits", "compare_logits", "render_report"} <= rules

    def test_comparisons_equal_the_local_run(self, runs):
        compare = Path("results") / MODEL / "compare"
        names = sorted(p.name for p in (runs["local"] / compare).glob("*.json"))
        assert names == sorted(p.name for p in (runs["slurm"] / compare).glob("*.json")) and names
        keys = ("kld_mean", "kld_p99", "kld_max", "top1_agreement", "delta_ppl", "cosine_min", "max_abs_err")
        for name in names:
            local = json.loads((runs["local"] / compare / name).read_text())
            slurm = json.loads((runs["slurm"] / compare / name).read_text())
            figures = {k: (local[k], slurm.get(k)) for k in keys if k in local}
            print(f"[slurm] {name}: " + ", ".join(f"{k} {a!r}" + ("" if a == b else f" != {b!r}")
                                                 for k, (a, b) in figures.items()), file=sys.stderr)
            assert without_timings(local) == without_timings(slurm), name  # every figure and the verdict
        report = Path("reports") / MODEL / "report.md"
        verdict = [re.findall(r"^\*\*Overall: .*$", (runs[w] / report).read_text(), re.M) for w in ("local", "slurm")]
        assert verdict[0] == verdict[1] and verdict[0]

    def test_gpu_and_npu_placement(self, runs):
        """Plan gpu and npu targets (dry run), map each job's resources to sbatch options with the plugin's own
        set_gres_string, and have Slurm allocate a placeholder job with them."""
        out = subprocess.run(
            [str(SLURM_VENV / "bin" / "snakemake"), "report", "-n", "--profile", "profiles/slurm", "--cores", CORES,
             "--configfile", str(CONFIG), "--config", "targets={gpu-hf-bf16: {enabled: true}, "
                                                      "npu-hf-bf16: {enabled: true}}"],
            cwd=runs["slurm"], env=slurm_env(), capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
        jobs = {}
        for block in re.split(r"\n(?=\[\w{3} \w{3} )", out.stdout):
            rule, target = re.search(r"rule (\w+):", block), re.search(r"wildcards: target=([\w.-]+)", block)
            resources = re.search(r"resources: (.*)", block)
            if rule and target and resources:
                res = dict(kv.split("=", 1) for kv in resources.group(1).split(", "))
                jobs[(rule.group(1), target.group(1))] = res
        cases = {("dump_logits", "gpu-hf-bf16"): ("gpu", "gres/gpu=1"),
                 ("dump_logits", "npu-hf-bf16"): ("npu", "gres/npu=1"),
                 ("compare_logits", "gpu-hf-bf16"): ("cpu", None),
                 ("compare_logits", "npu-hf-bf16"): ("cpu", None)}
        mapping = subprocess.run(
            [str(SLURM_VENV / "bin" / "python"), "-c", PLUGIN_MAPPING],
            input=json.dumps([jobs[case] for case in cases]), capture_output=True, text=True, check=True)
        options = json.loads(mapping.stdout)
        ids = []
        for (rule, target), opts in zip(cases, options):
            submit = subprocess.run(["sbatch", "--parsable", "--wait", *opts, "--comment", f"plan_{rule}_{target}",
                                     "--output", "/dev/null", "--wrap", "true"], capture_output=True, text=True)
            assert submit.returncode == 0, (rule, target, opts, submit.stderr)
            ids.append(submit.stdout.strip().split(";")[0])
        rows = sacct(ids)
        for ((rule, target), (partition, gres)), opts, row in zip(cases.items(), options, rows):
            print(f"[slurm] plan {rule}[{target}]: sbatch {' '.join(opts)} -> {row['Partition']} {row['AllocTRES']}"
                  f" {row['State']}", file=sys.stderr)
            assert row["State"] == "COMPLETED" and row["Partition"] == partition
            if gres:
                assert gres in row["AllocTRES"]
            else:
                assert "gres/" not in row["AllocTRES"]

    @pytest.mark.parametrize("setting,message", [
        ({"PORTCHECK_SLURM_CPU_PARTITION": "nosuch"}, "invalid partition specified: nosuch"),
        ({"PORTCHECK_SLURM_ACCOUNT": "nosuch"}, "The given account nosuch appears to be invalid"),
    ])
    def test_unknown_partition_or_account_fails_and_keeps_results(self, runs, tmp_path, setting, message):
        """On the local run's results: a job to redo (forced) cannot be submitted; Slurm's / the plugin's message,
        a failed run, and every result and report file as it was."""
        workdir = tmp_path / "work"
        shutil.copytree(runs["local"], workdir, symlinks=True)
        before = tree_digest(workdir)
        proc = slurm_snakemake(workdir, "--forcerun", "compare_logits", env=slurm_env(**setting))
        out = finish(proc, "bad input run", check=False)
        print(f"[slurm] {setting}: exit {proc.returncode}: "
              + " / ".join(line.strip() for line in out.splitlines() if message.split(":")[0] in line)[:400],
              file=sys.stderr)
        assert proc.returncode != 0
        assert message in out, out[-4000:]
        assert tree_digest(workdir) == before


# Runs in .venv-slurm: the sbatch options snakemake-executor-plugin-slurm derives from a job's resources (partition
# as get_partition_arg passes it, GRES/GPUs from its set_gres_string).
PLUGIN_MAPPING = r"""
import json, shlex, sys
from snakemake_executor_plugin_slurm.utils import set_gres_string

class Resources(dict):
    __getattr__ = dict.get

class Job:
    def __init__(self, res):
        self.resources = Resources({k: (int(v) if v.isdigit() else v) for k, v in res.items()})

out = []
for res in json.load(sys.stdin):
    job = Job(res)
    out.append(["-p", job.resources["slurm_partition"], *shlex.split(set_gres_string(job))])
print(json.dumps(out))
"""
