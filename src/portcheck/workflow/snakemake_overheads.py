"""Four fixed costs of Snakemake 9 that this workflow removes (measured on the embedded default, 2 cores):

- Params check: to tell whether a job's params changed, Snakemake serializes each one, and where pandas is
  installed (lm-eval needs it here) it imports pandas first, to hash DataFrame params: 0.25-0.4 s of a 1.56 s no-op
  run. A value can only be a pandas object once pandas is imported, so until then Snakemake's builtin serializer
  gives the same text: the recorded params stay equal and no job reruns.
- Exit: after each round that starts jobs the scheduler arms a 1 s timer (its job rate limit, 100 jobs/s), a
  non-daemon thread, so a run that starts any job waits up to 1 s after its last one before the process exits (a
  third of a template-only rerun). The timer only wakes the scheduler loop; once that loop has returned nothing
  waits for it, so it is made a daemon thread. The rate limit itself is unchanged.
- Config files: Snakemake reads a YAML config file through yte, which parses it with PyYAML's pure-Python
  FullLoader: 26 ms of a 1.45 s no-op for config/config.yaml. libyaml's CFullLoader gives the same document (the
  same constructor and resolver over a C parser); a document that asks for yte's templating (`__use_yte__`), a JSON
  file and one libyaml cannot read still go to Snakemake's own loader. Applied before the Snakefile's `configfile:`.
- Rule files: every run, Snakemake translates each included .smk file into Python with its pure-Python tokenizer:
  ~55 ms of a 1.42 s no-op for the 11 rule files. The translation depends on the file's text, its path, the rule
  count before it and Snakemake's version only, so it is kept in .snakemake/portcheck/parsed/ under a hash of all
  four (one entry per file, rewritten when one changes) and reused; a file is still read through Snakemake's source
  cache as before. A damaged entry is translated anew.

Each is applied only where Snakemake has the names it replaces (feature-detected); else it is left as it is."""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

SERIALIZERS = ("_serialize_param", "_serialize_param_pandas", "_serialize_param_builtin")
REEVALUATION = "_schedule_reevalutation"  # sic: Snakemake's spelling
CONFIG_LOADER = "_load_configfile"
PARSER = "parse"  # snakemake.workflow's name for snakemake.parser.parse, which include() calls
PARSER_PARAMETERS = ("path", "workflow", "linemap", "overwrite_shellcmd", "rulecount")
PARSED_DIR = Path(".snakemake") / "portcheck" / "parsed"


def remove_overheads() -> dict[str, bool]:
    """Apply all four; {name: whether it was applied}."""
    return {"params_without_pandas": serialize_params_lazily(), "exit_without_waiting": exit_without_waiting(),
            "config_with_libyaml": load_configs_with_libyaml(), "rule_files_translated_once": keep_translations()}


def serialize_params_lazily() -> bool:
    from snakemake.persistence import PersistenceBase

    if not all(hasattr(PersistenceBase, name) for name in SERIALIZERS):
        return False
    PersistenceBase._serialize_param = property(_serializer)
    return True


def _serializer(persistence):
    """Snakemake's pandas-aware serializer once pandas is imported (a param may then be a DataFrame), else its
    builtin one, which is what the pandas-aware one does for every other value."""
    return persistence._serialize_param_pandas if "pandas" in sys.modules else persistence._serialize_param_builtin


def exit_without_waiting() -> bool:
    from snakemake.scheduling.job_scheduler import JobScheduler

    if not callable(getattr(JobScheduler, REEVALUATION, None)):
        return False
    setattr(JobScheduler, REEVALUATION, _schedule_reevaluation)
    return True


def _schedule_reevaluation(scheduler, delay) -> None:
    """Snakemake's: wake the scheduler loop after `delay` seconds; a daemon thread, so exit does not wait for it."""
    timer = threading.Timer(delay, scheduler._open_jobs.release)
    timer.daemon = True
    timer.start()


def load_configs_with_libyaml() -> bool:
    import yaml
    from snakemake.common import configfile

    snakemake_loader = getattr(configfile, CONFIG_LOADER, None)
    if not callable(snakemake_loader) or not hasattr(yaml, "CFullLoader"):
        return False
    if not getattr(snakemake_loader, "snakemake_loader", None):  # applied once: a second call keeps the first
        setattr(configfile, CONFIG_LOADER, _libyaml_loader(snakemake_loader))
    return True


def _libyaml_loader(snakemake_loader):
    def load(configpath_or_obj, filetype="Config"):
        document = _plain_yaml(configpath_or_obj)
        return snakemake_loader(configpath_or_obj, filetype) if document is None else document

    load.snakemake_loader = snakemake_loader
    return load


def _plain_yaml(path):
    """The YAML document at `path` as yte returns one that does not ask for templating; None: Snakemake's loader
    decides (not a path, JSON, yte's templating, a file libyaml cannot read or that is not there)."""
    import yaml

    if not isinstance(path, (str, Path)) or Path(path).suffix == ".json":
        return None
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, ValueError):
        return None
    try:
        json.loads(text)
        return None  # JSON: Snakemake reads it into OrderedDicts
    except ValueError:
        pass
    try:
        document = yaml.load(text, Loader=yaml.CFullLoader)
    except yaml.YAMLError:
        return None
    return None if isinstance(document, dict) and "__use_yte__" in document else document


def keep_translations(cache_dir: Path = PARSED_DIR) -> bool:
    import inspect

    import snakemake.api  # noqa: F401  (imported before snakemake.workflow, which cannot be imported first)
    import snakemake.parser
    import snakemake.workflow as snakemake_workflow

    parse = getattr(snakemake_workflow, PARSER, None)
    if not callable(parse) or not hasattr(snakemake.parser, "Shell"):
        return False
    if not getattr(parse, "snakemake_parse", None):  # applied once: a second call keeps the first
        if tuple(inspect.signature(parse).parameters) != PARSER_PARAMETERS:
            return False
        setattr(snakemake_workflow, PARSER, _kept_parse(parse, Path(cache_dir)))
    return True


def _kept_parse(parse, cache_dir: Path):
    import snakemake
    from snakemake.parser import Shell

    from portcheck.atomic import write_json
    from portcheck.hashing import sha256_json, sha256_text

    def kept(path, workflow, linemap, overwrite_shellcmd=None, rulecount=0):
        if overwrite_shellcmd is not None:  # a shell command overwritten for every rule: Snakemake's own
            return parse(path, workflow, linemap, overwrite_shellcmd, rulecount)
        name = path.get_path_or_uri(secret_free=True)
        with workflow.sourcecache.open(path) as source:
            key = sha256_json([snakemake.__version__, name, rulecount, source.read()])
        entry = cache_dir / f"{sha256_text(name)[:16]}.json"
        kept_translation = _read_translation(entry, key)
        if kept_translation is None:
            code, rulecount = parse(path, workflow, linemap, overwrite_shellcmd, rulecount)
            write_json(entry, {"key": key, "code": code, "rulecount": rulecount, "linemap": sorted(linemap.items())})
            return code, rulecount
        Shell.overwrite_cmd = None  # what parse sets
        linemap.update(kept_translation["linemap"])
        return kept_translation["code"], kept_translation["rulecount"]

    kept.snakemake_parse = parse
    return kept


def _read_translation(entry: Path, key: str) -> dict | None:
    """The kept translation of the file `key` names, or None (none kept, another version of the file, damaged)."""
    try:
        stored = json.loads(entry.read_text(encoding="utf-8"))
        if stored["key"] == key and isinstance(stored["code"], str) and isinstance(stored["rulecount"], int):
            return {"code": stored["code"], "rulecount": stored["rulecount"],
                    "linemap": {int(line): int(source_line) for line, source_line in stored["linemap"]}}
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None
