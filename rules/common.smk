# Config validation, and every name and input function the stage rule files share (no rule file defines a
# name another one uses, so include order does not matter).
import os
import re
from pathlib import Path

from snakemake.exceptions import WorkflowError

# The package: on sys.path from the Snakefile.
from portcheck.config import (
    corpus_path,
    enabled_targets,
    engine_settings,
    load_prompts,
    load_schema,
    load_yaml,
    override_problems,
    validate_config,
)
from portcheck.artifacts import (
    CORPUS_KIND,
    DECODE_KIND,
    DUMP_KINDS,
    LAYERS_KIND,
    MODES_KIND,
    OPTIONAL_COMPARISONS,
    REPORTED_KINDS,
    TARGET_FILES,
    compare_path,
    mode_compare_path,
    mode_path,
    target_path,
)
from portcheck.modes.catalog import MODE_PATTERN, active_runs, parse_run
from portcheck.benchmarks.plan import bench_params, benched_targets
from portcheck.model.checkpoint import checkpoint_fingerprint
from portcheck.workflow.rebuild import rebuild_damaged
from portcheck.errors import PortcheckError
from portcheck.accuracy.tasks import data_files as accuracy_task_data
from portcheck.accuracy.evaluate import evaluation_params
from portcheck.env.versions import distribution_version
from portcheck.env import python_env
from portcheck.vision.engines import IMAGE_ENGINES as VISION_ENGINES, NOT_WIRED as VISION_NOT_WIRED
from portcheck.vision.images import image_problems as vision_image_problems
from portcheck.targets import (
    ENGINE_MODULES,
    FLOOR_TARGET,
    TARGET_PATTERN,
    floor_absence,
    parse_target,
    references_off,
    without_toggles,
)
from portcheck.workflow.code_inputs import PACKAGE_DIR, module_closure, remember_imports
from portcheck.workflow.version_params import result_versions

# The (config, schema) pairs the schema passed, by hash: a rerun on the same config skips importing jsonschema.
VALID_CONFIGS = Path(".snakemake") / "portcheck" / "valid-configs"
# What each package file imports (package_sources' closures), kept between runs while the file is unchanged.
remember_imports(Path(".snakemake") / "portcheck" / "package-imports.json")


def _config_file_targets():
    """Targets the config files define (the Snakefile's and any --configfile), before CLI/profile overrides."""
    files = [*workflow.configfiles, *(workflow.overwrite_configfiles or [])]
    loaded = [load_yaml(f) or {} for f in files if Path(f).is_file()]
    return list(dict.fromkeys(t for c in loaded for t in (c.get("targets") or {})))


_override_problems = override_problems(
    dict(workflow.config_settings.config or {}),
    _config_file_targets(),
    source="the command line or profile (--config / a profile's config:)",
)
if _override_problems:
    raise WorkflowError("invalid config:\n  - " + "\n  - ".join(_override_problems))

try:
    _validated = validate_config(
        config,
        load_schema(
            Path(workflow.basedir) / "config" / "schema.yaml", Path(".snakemake") / "portcheck" / "schema.json"
        ),
        base_dir=workflow.basedir,
        valid_cache=VALID_CONFIGS,
    )
except PortcheckError as error:
    raise WorkflowError(str(error))
config.clear()
config.update(_validated)
_image_problems = vision_image_problems(config["vision"], workflow.basedir)
if _image_problems:
    raise WorkflowError("invalid config:\n  - " + "\n  - ".join(_image_problems))

MODEL = config["model"]["name"]
RESULTS = f"results/{MODEL}"
REPORTS = f"reports/{MODEL}"
REFERENCE = config["reference"]
TARGETS = enabled_targets(config)
COMPARED = [t for t in TARGETS if t != REFERENCE]


def python_env_dir(target):
    """The environment whose interpreter runs `target`'s jobs (absolute path); None: the one running snakemake."""
    env = config["targets"][target]["python_env"]
    return str(python_env.resolve(env, workflow.basedir)) if env else None


# Each target's own Python environment is probed before any job runs (a missing one, or one without the target's
# stack, fails here naming it and what to install, not after a minute of engine start).
_env_problems = [
    problem
    for target in TARGETS
    if config["targets"][target]["python_env"]
    for problem in python_env.problems(target, config["targets"][target]["python_env"], workflow.basedir)
]
if _env_problems:
    raise WorkflowError("invalid config:\n  - " + "\n  - ".join(_env_problems))
PROMPTS = load_prompts(config, workflow.basedir)
SERVED = [t for t in TARGETS if parse_target(t).engine == "vllm"]  # the serving check starts `vllm serve`
# The targets whose offline benchmarks the report asks for: the reference's only with bench.reference, the bf16
# floor's only with bench.floor.
BENCHED = benched_targets(TARGETS, REFERENCE, config["bench"])
# The targets whose task accuracy the config leaves out, with the setting: the bf16 floor's unless accuracy.floor.
NOT_EVALUATED = references_off(TARGETS, REFERENCE, "accuracy", config["accuracy"])
# The targets whose determinism test and generation samples the config leaves out, with the setting: the reference's
# and the floor's unless determinism.reference / .floor (samples likewise). Their dump writes a "not run" record in
# the declared output, which the report does not read (it names the setting).
NOT_MEASURED = {kind: references_off(TARGETS, REFERENCE, kind, config[kind]) for kind in ("determinism", "samples")}
CORPUS = config["corpus"]["enabled"]
DECODE = config["decode"]["enabled"]
# The corpus text, an input of every dump (another text redoes the dumps); local(): it stays on each host.
CORPUS_TEXT = local(os.path.relpath(corpus_path(config, workflow.basedir)))
# The accuracy stage's shipped lm-eval task data (an edit reruns the evaluations), and the lm-eval version (an
# upgrade reruns them): lm-eval runs in this environment for every target.
ACCURACY_TASK_DATA = [os.path.relpath(path) for path in accuracy_task_data()]
LM_EVAL_VERSION = distribution_version("lm_eval", "lm-eval")
# Engine-mode runs (<target>+<mode>) of enabled targets, and those whose target is not enabled (reported not run).
MODE_RUNS, MODE_RUNS_NOT_RUN = active_runs(config)
# What a dump job writes: the optional kinds are named like the config sections that turn them on.
DUMPED_KINDS = (
    *DUMP_KINDS,
    *(kind for kind in (CORPUS_KIND, DECODE_KIND, LAYERS_KIND) if config[kind]["enabled"]),
)
# The targets a mode run is set against: only their dump (dump_logits_with_mode_base) also decodes the mode workload
# in the base configuration, modes/base. Nothing reads the reference's or another target's; at the real shape it
# took 3 of the reference dump's 8 minutes.
MODE_TARGETS = sorted({parse_run(run).target for run in MODE_RUNS})
MODE_TARGET_PATTERN = "|".join(map(re.escape, MODE_TARGETS)) or "(?!)"  # (?!) matches nothing
# What run_mode reads of the modes section (the run list itself is not one of its settings, nor the acceptance
# rule compare_mode applies).
MODE_SETTINGS = {
    key: value for key, value in config["modes"].items() if key not in ("enabled", "runs", "mtp_acceptance")
}
# What the dump's base run reads of it: the workload and its batching only (a mode's own knobs redo no dump).
MODE_WORKLOAD = {key: config["modes"][key] for key in ("prompts", "prefix_tokens", "max_tokens", "batched")}
# What a mode run reads of the corpus section: the windows it scores (not how they are compared).
CORPUS_WINDOWS = {key: config["corpus"][key] for key in ("enabled", "window_length", "windows")}
# What the dump job captures per layer (the thresholds are the comparison's: changing them redoes no dump).
# How the corpus, decode and mode dumps store each position (dump/compact.py): whole rows or compact records.
STORAGE = {key: config["logits"][key] for key in ("storage", "full_max_vocab", "compact_topk", "compact_sample")}
LAYER_CAPTURE = {key: config["layers"][key] for key in ("enabled", "windows", "indices", "state_sequences")}
REPORT = f"{REPORTS}/report.md"
HTML_REPORT = f"{REPORTS}/report.html"
PLOTS = {
    "kld_per_position": f"{REPORTS}/kld_per_position.png",
    "kld_distribution": f"{REPORTS}/kld_distribution.png",
}
BENCH_PLOTS = {
    "throughput_vs_batch": f"{REPORTS}/throughput_vs_batch.png",
    "latency_percentiles": f"{REPORTS}/latency_percentiles.png",
}
LONG_CONTEXT_PLOT = f"{REPORTS}/kld_long_context.png"
LAYERS_PLOT = f"{REPORTS}/layer_errors.png"
SERVE_PLOT = f"{REPORTS}/serve_sweep.png"
# Every plot the report links, in its order; the long-context and per-layer ones only where they are measured.
REPORT_PLOTS = {
    **PLOTS,
    **({"kld_long_context": LONG_CONTEXT_PLOT} if CORPUS else {}),
    **({"layer_errors": LAYERS_PLOT} if config["layers"]["enabled"] else {}),
    **BENCH_PLOTS,
    **({"serve_sweep": SERVE_PLOT} if SERVED else {}),
}
# The config file the run used, for the report's "regenerate" command (None: the default one).
CONFIGFILE = workflow.overwrite_configfiles[-1] if workflow.overwrite_configfiles else None


wildcard_constraints:
    target=TARGET_PATTERN,


def target_file(kind, target="{target}"):
    """results/<model>/<target>/<file> of an artifact kind (portcheck.artifacts); a wildcard by default."""
    return target_path(RESULTS, target, kind)


def target_files(kind, targets):
    return [target_file(kind, t) for t in targets]


def compare_file(target="{target}", kind="compare"):
    """results/<model>/compare/<target><suffix> of a comparison kind (portcheck.artifacts.COMPARE_SUFFIXES)."""
    return compare_path(RESULTS, target, kind)


def compare_files(kind):
    """Every compared target's comparison of `kind`; none where the config turns that comparison off."""
    enabled = config[OPTIONAL_COMPARISONS[kind]]["enabled"] if kind in OPTIONAL_COMPARISONS else True
    return [compare_file(t, kind) for t in compared_for(kind)] if enabled else []


def compared_for(kind):
    """The targets compared for `kind`: the accuracy comparison leaves out those the config does not evaluate."""
    return [t for t in COMPARED if kind != "accuracy_compare" or t not in NOT_EVALUATED]


def layers_floor(wildcards):
    """compare_layers' bf16 floor: the floor target's layers where it is enabled (portcheck.compare.layers)."""
    return floor_input("layers", wildcards)


def corpus_floor(wildcards):
    """compare_corpus' bf16 floor: the floor target's corpus dump, for the KLD-vs-floor check."""
    return floor_input("corpus", wildcards)


def decode_floor(wildcards):
    """compare_decode's bf16 floor: the floor target's engine on this target's decoded tokens (score_decode_floor)."""
    return {} if no_floor(wildcards) else {"floor": target_file("decode_floor", wildcards.target)}


def floor_input(kind, wildcards):
    if no_floor(wildcards):
        return {}
    return {"floor": target_file(kind, FLOOR_TARGET)}


def no_floor(wildcards):
    """Why this target is compared with no bf16 floor (the report says it); None: the floor is an input."""
    return floor_absence(wildcards.target, REFERENCE, TARGETS)


def dump_measurement(kind):
    """The dump's settings for a target's determinism test or samples: None where the config leaves them out
    for it (NOT_MEASURED). The toggles are not settings: turning one on redoes only that target's dump."""
    settings = without_toggles(config[kind])
    return lambda wildcards: None if wildcards.target in NOT_MEASURED[kind] else settings


def not_measured(wildcards):
    """{kind: the setting that leaves it out} for this target's dump: its "not run" records."""
    return {kind: off[wildcards.target] for kind, off in NOT_MEASURED.items() if wildcards.target in off}


def reported(kind, target):
    """Whether the report reads this artifact of the target: not the benchmarks of a target not benchmarked, nor a
    measurement the config leaves out (the report names the setting instead)."""
    return (kind != "bench" or target in BENCHED) and target not in NOT_MEASURED.get(kind, {})


def dump_inputs():
    """The dump reads the checkpoint, and the corpus text where corpus windows are scored or the mode workload
    (a prefix cut from it) is decoded."""
    return {**engine_inputs(), **({"corpus": CORPUS_TEXT} if CORPUS or MODE_RUNS else {})}


MANIFEST = f"{RESULTS}/manifest.json"
CONTEXT = f"{RESULTS}/context.json"  # the reference's far-context dependence (rule measure_context)
# The MTP head's acceptance along the reference's own greedy decode (rule measure_mtp; the model section).
MTP_HEAD = f"{RESULTS}/mtp_head.json"


def engine_inputs():
    """What every job that starts an engine on the checkpoint reads of it: the checkpoint, and its manifest, written
    only for a checkpoint the manifest stage accepted (so no engine starts on one it refused) and rewritten when a
    local checkpoint's content changes (write_manifest's params)."""
    return {"model": model_dir(), "manifest": MANIFEST}


def mode_file(kind, mode="{mode}", target="{target}"):
    """results/<model>/<target>/modes/<mode>...: a mode run's decode dump, proof or reference scores (mode "base":
    the target's own base-configuration run, written by dump_logits_with_mode_base)."""
    return mode_path(RESULTS, target, mode, kind)


def mode_compare_file(run="{target}+{mode}"):
    return mode_compare_path(RESULTS, run)


def mode_corpus_inputs():
    """compare_mode's prefill inputs where the corpus is scored: the run's windows, the reference's and the base
    configuration's comparison of its own windows."""
    if not CORPUS:
        return {}
    return {
        "corpus": mode_file("mode_corpus"),
        "corpus_reference": target_file("corpus", REFERENCE),
        "base_corpus": compare_file(kind="corpus_compare"),
    }


def mode_corpus_floor(wildcards):
    """compare_mode's bf16 floor on the prefill path, where the corpus is scored: the floor target's corpus
    comparison (the same windows)."""
    if not CORPUS or no_floor(wildcards):
        return {}
    return {"floor_corpus": compare_file(FLOOR_TARGET, "corpus_compare")}


def mtp_reference_inputs(wildcards):
    """compare_mode's input for an mtp run: the reference MTP's acceptance on the run's tokens (rule score_mtp)."""
    if wildcards.mode != "mtp":
        return {}
    return {"mtp_reference": mode_file("mode_mtp_reference", mode="mtp", target=wildcards.target)}


def mtp_reference_sources(wildcards):
    """The reference MTP run on the reference's one engine."""
    return package_sources("modes.mtp_reference", exclude=engines_other_than(REFERENCE))


def mode_sources(wildcards):
    """A mode run with the one engine its target runs (always vllm)."""
    return package_sources("modes.run", exclude=other_engines(wildcards))


def package_sources(*modules, exclude=()):
    """The package files a rule runs (modules, dotted under portcheck, and what they import), declared as input
    so that editing them reruns the rule; `exclude` names modules or subpackages the rule does not run."""
    files = module_closure(*modules, exclude=tuple(exclude), package_dir=PACKAGE_DIR)
    # local(): code stays on each host even when results go to a storage plugin's shared store.
    return local([f"src/portcheck/{f.relative_to(PACKAGE_DIR)}" for f in files])


def other_engines(wildcards):
    """The engine packages this target does not run: editing them must not rerun it."""
    return engines_other_than(wildcards.target)


def engines_other_than(target):
    engine = parse_target(target).engine
    return tuple(module for name, module in ENGINE_MODULES.items() if name != engine)


def fetch_inputs():
    """A download does not depend on the tiny model's code: editing it must not re-download a checkpoint."""
    if config["model"]["source"].startswith("tiny"):
        # the default Qwen3.5's shipped text weights and MTP head (portcheck.model.tiny.SHIPPED_*); another seed's
        # head is distilled on greedy prefixes of the curriculum's text (model.curriculum is among the sources)
        shipped = (
            [f"tiny_qwen3_5_{part}" for part in ("text.safetensors", "text.json", "mtp.safetensors", "mtp.json")]
            + ["pydoc_topics.txt.gz"]
            if config["model"]["source"] == "tiny"
            else []
        )
        return package_sources("model.acquire") + local(
            [f"src/portcheck/model/data/{name}" for name in ["tiny_corpus.txt", *shipped]]
        )
    return package_sources("model.acquire", exclude=("model.tiny",))


def dump_sources(wildcards):
    """The dump stage with the one engine the target runs."""
    return package_sources("dump.run", exclude=other_engines(wildcards))


def bench_sources(wildcards):
    """The offline benchmarks with the one engine the target runs."""
    return package_sources("benchmarks.offline", exclude=other_engines(wildcards))


def accuracy_sources(wildcards):
    """lm-eval's driver, and the server it starts for a vllm target, with the one engine the target runs."""
    return package_sources("accuracy.evaluate", "benchmarks.serving", exclude=other_engines(wildcards))


def vision_sources(wildcards):
    """The vision stage with the one engine the target runs."""
    return package_sources("vision.run", exclude=other_engines(wildcards))


def vision_takes_images(target):
    return parse_target(target).engine in VISION_ENGINES


def vision_dumps(wildcards):
    """compare_vision's inputs: both sides' image-prompt dumps, and the bf16 floor's where it has one, where the
    target's engine takes images (none else: the comparison is written not run, with vision_not_wired's reason)."""
    if not vision_takes_images(wildcards.target):
        return {}
    sides = [("reference", REFERENCE), ("target", wildcards.target)]
    if not no_floor(wildcards):
        sides.append(("floor", FLOOR_TARGET))  # the bf16 floor's image prompts, for the vs-floor checks
    return {
        f"{side}_{kind}": target_file(kind, target) for side, target in sides for kind in ("vision", "vision_blocks")
    }


def vision_not_wired(wildcards):
    return None if vision_takes_images(wildcards.target) else VISION_NOT_WIRED


def model_dir():
    """A local checkpoint directory stays on this host (local()); a fetched one goes to the shared results store
    when there is one, so that a second host reuses it instead of fetching again and redoing every target."""
    if config["model"]["source"] == "local":
        return local(config["model"]["path"])
    return f"resources/models/{MODEL}"


def local_checkpoint_fingerprint():
    """A local checkpoint's content (names, sizes, sha256s) as one hash, a param of write_manifest: an overwrite in
    place (its directory's mtime does not move) reruns the manifest and every engine job after it; a `touch` reruns
    nothing. Each file's sha256 is cached while its size, mtime and inode stay the same, so a no-op run costs one
    stat per file. Computed where the run is planned (a cluster job's own process does not rehash)."""
    if config["model"]["source"] != "local" or not workflow.is_main_process:
        return None
    cache = Path(".snakemake") / "portcheck" / f"{MODEL}.checkpoint-hashes.json"
    return checkpoint_fingerprint(config["model"]["path"], cache)


def device_resources(device):
    """Accelerator jobs ask for their device, so schedulers and profiles can place them."""
    return lambda wildcards: int(parse_target(wildcards.target).device == device)


def target_threads(wildcards):
    return config["targets"][wildcards.target]["threads"] or workflow.cores


def target_settings(wildcards):
    return vars(engine_settings(config, wildcards.target))


# score_decode runs the reference's engine on each target's decoded tokens: its device, threads and code.
REFERENCE_DEVICE = parse_target(REFERENCE).device


def reference_threads(wildcards):
    # Read when a job is scheduled: `snakemake --unlock` / `--cleanup-metadata` parse the workflow without cores.
    return config["targets"][REFERENCE]["threads"] or workflow.cores


REFERENCE_THREADS = reference_threads


def reference_decode_sources(wildcards):
    """The reference's scoring of decoded tokens with the reference's one engine."""
    return package_sources("dump.decode_reference", exclude=engines_other_than(REFERENCE))


def floor_decode_sources(wildcards):
    """The bf16 floor's scoring of decoded tokens with the floor target's one engine."""
    return package_sources("dump.decode_reference", exclude=engines_other_than(FLOOR_TARGET))


def context_sources(wildcards):
    """The reference's context-dependence measurement with the reference's one engine."""
    return package_sources("model.context", exclude=engines_other_than(REFERENCE))


def target_hardware(wildcards):
    """The hardware peaks this target is checked against: {name, peaks}; peaks None where none is configured."""
    name = config["targets"][wildcards.target].get("hardware")
    return {"name": name, "peaks": config["hardware"].get(name) if name else None}


def stack_params(wildcards):
    """Installed versions that change this target's results (portcheck.workflow.version_params), read on the host that evaluates
    the workflow (in the target's own Python environment where it has one): as params, an upgrade reruns exactly the
    affected targets' jobs (--list-changes params)."""
    return result_versions(wildcards.target, environment=python_env_dir(wildcards.target))


def target_python_env(wildcards):
    return python_env_dir(wildcards.target)


# Where a job that has an engine up leaves a sibling job's result, under the request that job will make
# (portcheck.workflow.handoff): the dump job benchmarks its target on its engine, the serving check evaluates its
# target's accuracy on its server.
HANDOFF = f"{RESULTS}/handoff"


def benchmark_params(wildcards):
    return bench_params(config, wildcards.target, stack_params(wildcards))


def dump_first(wildcards):
    """A target's benchmarks run after its dump, which hands the record over (one engine start). Not ancient(), as
    for accuracy_offered_by: a dump rerun reruns the benchmarks, which take the record the dump job kept."""
    return target_file("logits", wildcards.target)


def accuracy_params(wildcards):
    return evaluation_params(
        config, wildcards.target, stack_params(wildcards), target_python_env(wildcards), LM_EVAL_VERSION
    )


def accuracy_offered_by(wildcards):
    """An evaluation runs after the job that does it on an engine already up and hands the record over: a served
    target's serving check (one server start), an hf target's dump (one model load). Not ancient(): Snakemake 9 then
    skips the evaluation's own rerun reasons whenever that job reruns. So its rerun reruns the evaluation, which
    takes the record that job kept (no server or model load, no lm-eval)."""
    if wildcards.target in SERVED:
        return target_file("serve", wildcards.target)
    return target_file("logits", wildcards.target) if parse_target(wildcards.target).engine == "hf" else []


# score_decode / score_mode run the reference's engine: in the reference's environment, with its versions.
REFERENCE_PYTHON_ENV = python_env_dir(REFERENCE)
REFERENCE_STACK = result_versions(REFERENCE, environment=REFERENCE_PYTHON_ENV)
# score_decode_floor runs the bf16 floor's engine (FLOOR_TARGET) the same way.
FLOOR_DEVICE = parse_target(FLOOR_TARGET).device
FLOOR_PYTHON_ENV = python_env_dir(FLOOR_TARGET) if FLOOR_TARGET in TARGETS else None
FLOOR_STACK = result_versions(FLOOR_TARGET, environment=FLOOR_PYTHON_ENV) if FLOOR_TARGET in TARGETS else {}
FLOOR_SETTINGS = vars(engine_settings(config, FLOOR_TARGET)) if FLOOR_TARGET in TARGETS else {}


def floor_threads(wildcards):
    return config["targets"][FLOOR_TARGET]["threads"] or workflow.cores


# Every artifact the report reads, by render_report's input names (rules/report.smk).
REPORT_ARTIFACTS = {
    **{kind: compare_files(kind) for kind in OPTIONAL_COMPARISONS},
    "manifest": MANIFEST,
    "context": [CONTEXT] if CORPUS else [],
    "mtp_head": [MTP_HEAD] if DECODE else [],
    "per_target": [target_file(kind, t) for t in TARGETS for kind in REPORTED_KINDS if reported(kind, t)],
    "bench_checks": target_files("bench_checks", BENCHED),
    "serve": target_files("serve", SERVED),
    "compare": compare_files("compare"),
    "modes": [mode_compare_file(run) for run in MODE_RUNS],
    # Not read by the report: the reference's image-prompt dumps, made by every run that makes the reference (as
    # its logits are), so that a host adding a target later takes them from a shared store instead of writing them.
    "reference_vision": (
        [target_file(kind, REFERENCE) for kind in ("vision", "vision_blocks")]
        if config["vision"]["enabled"] and vision_takes_images(REFERENCE)
        else []
    ),
}

# The report's artifacts that are absent or edited are rebuilt (portcheck.workflow.rebuild): checked while the
# workflow is parsed, in the process that plans the run (not in each job's, nor against a storage plugin's store,
# whose copies are not on this host).
if workflow.is_main_process and not workflow.storage_settings.default_storage_provider:
    rebuild_damaged(
        workflow,
        [path for paths in REPORT_ARTIFACTS.values() for path in ([paths] if isinstance(paths, str) else paths)]
        + list(REPORT_PLOTS.values()),
        REPORT,
    )
