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
    validate_config,
)
from portcheck.errors import PortcheckError  # noqa: E402
from portcheck.sources import PACKAGE_DIR, module_closure  # noqa: E402
from portcheck.targets import ENGINES, TARGET_PATTERN, parse_target  # noqa: E402

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
    return [f"src/portcheck/{f.relative_to(PACKAGE_DIR)}" for f in files if f.stem not in exclude]


def engine_sources(wildcards):
    """A target runs one engine module: editing the other engine's code does not rerun it."""
    engine = parse_target(wildcards.target).engine
    return package_sources("run", exclude=tuple(e for e in ENGINES if e != engine))


def model_dir():
    if config["model"]["source"] == "local":
        return config["model"]["path"]
    return f"resources/models/{MODEL}"


def device_resources(device):
    """Accelerator jobs ask for their device, so schedulers and profiles can place them."""
    return lambda wildcards: int(parse_target(wildcards.target).device == device)


def target_threads(wildcards):
    return config["targets"][wildcards.target]["threads"] or workflow.cores


def target_settings(wildcards):
    return vars(engine_settings(config, wildcards.target))


