# Config validation, paths and input functions shared by every stage.
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from portcheck.config import (  # noqa: E402
    enabled_targets,
    engine_settings,
    load_prompts,
    load_schema,
    override_problems,
    validate_config,
)
from portcheck.errors import PortcheckError  # noqa: E402
from portcheck.sources import PACKAGE_DIR, module_closure  # noqa: E402
from portcheck.stack import result_versions  # noqa: E402
from portcheck.targets import ENGINES, TARGET_PATTERN, parse_target  # noqa: E402


def _config_file_targets():
    """Targets the config files define (the Snakefile's and any --configfile), before CLI/profile overrides."""
    import yaml

    files = [*workflow.configfiles, *(workflow.overwrite_configfiles or [])]
    loaded = [yaml.safe_load(Path(f).read_text(encoding="utf-8")) or {} for f in files if Path(f).is_file()]
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
        load_schema(Path(workflow.basedir) / "config" / "schema.yaml"),
        base_dir=workflow.basedir,
    )
except PortcheckError as error:
    raise WorkflowError(str(error))
config.clear()
config.update(_validated)

MODEL = config["model"]["name"]
RESULTS = f"results/{MODEL}"
REPORTS = f"reports/{MODEL}"
REFERENCE = config["reference"]
TARGETS = enabled_targets(config)
COMPARED = [t for t in TARGETS if t != REFERENCE]
PROMPTS = load_prompts(config, workflow.basedir)
REPORT = f"{REPORTS}/report.md"
# The config file the run used, for the report's "regenerate" command (None: the default one).
CONFIGFILE = workflow.overwrite_configfiles[-1] if workflow.overwrite_configfiles else None


wildcard_constraints:
    target=TARGET_PATTERN,


def package_sources(*modules, exclude=()):
    """The package files a rule runs (modules and what they import), declared as input so that
    editing them reruns the rule."""
    files = module_closure(*modules, package_dir=PACKAGE_DIR)
    # local(): code stays on each host even when results go to a storage plugin's shared store.
    return local([f"src/portcheck/{f.relative_to(PACKAGE_DIR)}" for f in files if f.stem not in exclude])


def fetch_inputs():
    """A download does not depend on the tiny model's code: editing it must not re-download a checkpoint."""
    if config["model"]["source"] == "tiny":
        return package_sources("acquire") + local(["src/portcheck/data/tiny_corpus.txt"])
    return package_sources("acquire", exclude=("tiny",))


def engine_sources(wildcards):
    """A target runs one engine module: editing the other engine's code does not rerun it."""
    engine = parse_target(wildcards.target).engine
    return package_sources("run", exclude=tuple(e for e in ENGINES if e != engine))


# Moved from rules/bench.smk: snakemake --lint wants functions apart from rules.
def bench_sources(wildcards):
    """The benchmark code and the one engine module the target runs (editing the other engine does not rerun it)."""
    engine = parse_target(wildcards.target).engine
    return package_sources("bench", "run", exclude=tuple(e for e in ENGINES if e != engine))


def model_dir():
    """A local checkpoint directory stays on this host (local()); a fetched one goes to the shared results store
    when there is one, so that a second host reuses it instead of fetching again and redoing every target."""
    if config["model"]["source"] == "local":
        return local(config["model"]["path"])
    return f"resources/models/{MODEL}"


def device_resources(device):
    """Accelerator jobs ask for their device, so schedulers and profiles can place them."""
    return lambda wildcards: int(parse_target(wildcards.target).device == device)


def target_threads(wildcards):
    return config["targets"][wildcards.target]["threads"] or workflow.cores


def target_settings(wildcards):
    return vars(engine_settings(config, wildcards.target))


def stack_params(wildcards):
    """Installed versions that change this target's results (portcheck.stack), read on the host that evaluates
    the workflow: as params, an upgrade reruns exactly the affected targets' jobs (--list-changes params)."""
    return result_versions(wildcards.target)
