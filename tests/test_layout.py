"""The layout a newcomer relies on: stage rule files define no names of their own, package __init__ files
re-export nothing (so a rule's code inputs stay exact), code inputs follow imports by module path, and
`make clean` removes outputs only."""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess

import pytest

from conftest import ROOT
from portcheck.workflow import code_inputs
from portcheck.workflow.code_inputs import PACKAGE_DIR, module_closure

# A file-private name starts with "_"; any other top-level name is one another rule file could come to use.
SHARED_ASSIGNMENT = re.compile(r"^([A-Za-z]\w*)\s*=", re.M)


@pytest.mark.parametrize("rule_file", sorted(p.name for p in (ROOT / "rules").glob("*.smk") if p.name != "common.smk"))
def test_stage_rule_files_define_no_shared_names(rule_file):
    names = SHARED_ASSIGNMENT.findall((ROOT / "rules" / rule_file).read_text())
    assert names == [], f"{rule_file} defines {names}: shared names belong in rules/common.smk"


def test_package_init_files_hold_only_a_docstring():
    for init in PACKAGE_DIR.rglob("__init__.py"):
        body = ast.parse(init.read_text()).body
        code = [node for node in body if not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant))]
        if init.parent == PACKAGE_DIR:  # the package root carries its version
            code = [n for n in code if not (isinstance(n, ast.Assign) and n.targets[0].id == "__version__")]
        assert code == [], f"{init.relative_to(PACKAGE_DIR)} has code: rules importing a sibling would widen"


def _relative(files):
    return {str(f.relative_to(PACKAGE_DIR)) for f in files}


def test_code_inputs_exclude_the_other_engine_by_module_path():
    hf_only = _relative(module_closure("dump.run", exclude=("engines.vllm",)))
    vllm_only = _relative(module_closure("dump.run", exclude=("engines.hf",)))
    assert "engines/hf.py" in hf_only and not any(f.startswith("engines/vllm/") for f in hf_only)
    assert "engines/hf.py" not in vllm_only
    assert {"engines/vllm/__init__.py", "engines/vllm/engine.py", "engines/vllm/engine_args.py",
            "engines/vllm/worker_extension.py"} <= vllm_only  # the extension vLLM loads by name is imported too
    # Shared code is in both: the dump format, the engine base, the stage package.
    assert {"dump/logits_file.py", "engines/base.py", "dump/__init__.py", "__init__.py"} <= hf_only & vllm_only


def _small_package(root):
    package = root / "portcheck"
    (package / "stage").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "stage" / "__init__.py").write_text("")
    (package / "stage" / "entry.py").write_text(
        "from portcheck.stage import helper\nfrom .sibling import x\n\ndef f():\n    import portcheck.late\n")
    for name in ("stage/helper.py", "stage/sibling.py", "late.py", "unused.py"):
        (package / name).write_text("x = 1\n")
    return package


ENTRY_CLOSURE = {"__init__.py", "stage/__init__.py", "stage/entry.py", "stage/helper.py", "stage/sibling.py", "late.py"}


def test_code_inputs_follow_absolute_relative_and_function_level_imports(tmp_path):
    package = _small_package(tmp_path)
    assert _relative_to(module_closure("stage.entry", package_dir=package), package) == ENTRY_CLOSURE


def test_what_each_file_imports_is_kept_between_runs_while_the_file_is_unchanged(tmp_path, monkeypatch):
    """remember_imports: a second run parses no file and finds the same closures; an edited file is parsed again
    and its new import followed; a cache that is not JSON is parsed anew and rewritten."""
    package, cache = _small_package(tmp_path), tmp_path / ".snakemake" / "package-imports.json"
    parsed = []
    parse = code_inputs._import_nodes
    monkeypatch.setattr(code_inputs, "_import_nodes", lambda text: parsed.append(text) or parse(text))

    def new_run():  # a fresh process: nothing cached in memory
        parsed.clear()
        monkeypatch.setattr(code_inputs, "_IMPORTS_CACHE", {})
        for cached in (code_inputs._package_files, code_inputs._import_graph, code_inputs._closure):
            cached.cache_clear()
        code_inputs.remember_imports(cache, package)
        return _relative_to(module_closure("stage.entry", package_dir=package), package)

    assert new_run() == ENTRY_CLOSURE and len(parsed) == 7
    assert json.loads(cache.read_text())["stage/entry.py"][2] == ["late", "stage", "stage.helper", "stage.sibling"]
    assert new_run() == ENTRY_CLOSURE and parsed == []
    (package / "stage" / "helper.py").write_text("import portcheck.unused\n")
    assert new_run() == ENTRY_CLOSURE | {"unused.py"} and parsed == ["import portcheck.unused\n"]
    for damaged in ("{not json", "[]", '{"stage/entry.py": 3}'):
        cache.write_text(damaged)
        assert new_run() == ENTRY_CLOSURE | {"unused.py"} and len(parsed) == 7, damaged
        assert json.loads(cache.read_text())["stage/helper.py"][2] == ["unused"]


def test_a_rule_naming_a_module_the_package_lacks_is_refused_naming_it():
    with pytest.raises(FileNotFoundError, match="no module dump.rnu in"):
        module_closure("dump.rnu", "dump.run")


def _relative_to(files, root):
    return {str(f.relative_to(root)) for f in files}


def test_parsing_the_workflow_imports_no_numerical_library():
    """Every run, a no-op included, executes the rule files' imports: the package modules they import pull in no
    numpy or torch (numpy alone was 45 ms of a 1.5 s no-op), nor jsonschema (imported only for a config not yet
    validated)."""
    import sys

    imports = re.findall(r"^from (portcheck[\w.]*) import", "\n".join(
        path.read_text() for path in [ROOT / "Snakefile", *sorted((ROOT / "rules").glob("*.smk"))]), re.M)
    assert "portcheck.benchmarks.plan" in imports and len(imports) > 10
    check = "; ".join(f"import {module}" for module in dict.fromkeys(imports)) + (
        "; import sys; print(sorted({m.split('.')[0] for m in sys.modules} & {'numpy', 'torch', 'jsonschema'}))")
    run = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, check=True,
                         cwd=ROOT, env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"})
    assert run.stdout.strip() == "[]"


def test_make_clean_removes_outputs_only(tmp_path):
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    shutil.copytree(ROOT / "reports" / "templates", tmp_path / "reports" / "templates")
    for output in ("results/m/x.json", "resources/models/m/config.json", "reports/m/report.md", "logs/m/a.log",
                   ".snakemake/metadata/x"):
        (tmp_path / output).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / output).write_text("{}")
    subprocess.run(["make", "clean"], cwd=tmp_path, check=True, capture_output=True)
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    templates = sorted(f"reports/templates/{p.name}" for p in (ROOT / "reports" / "templates").iterdir())
    assert left == sorted(["Makefile", *templates])
