"""The four Snakemake costs portcheck removes (portcheck.workflow.snakemake_overheads) keep Snakemake's behaviour: the
params serializer gives Snakemake's own text for every value, without importing pandas until pandas is imported; the
scheduler's reevaluation timer still wakes the scheduler but no longer holds the process at exit; a config file reads
as Snakemake reads it; a rule file's kept translation is Snakemake's own. Each check runs in a fresh interpreter:
pytest's own may have imported pandas already, and the config loader and the parser are patched for the whole
process."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from conftest import ROOT


def run_python(code: str, timeout: float = 120) -> str:
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                            timeout=timeout, env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_params_serialize_as_snakemake_does_and_pandas_is_imported_only_when_a_param_could_be_a_dataframe():
    out = run_python("""
        import sys
        from snakemake.persistence.file import FilePersistence
        from portcheck.workflow.snakemake_overheads import serialize_params_lazily

        persistence = object.__new__(FilePersistence)  # the serializers read no state
        values = [1, 2.5, "text", None, True, [1, "a"], {"b": {"c": [1, 2]}}, ("t",), object()]
        builtin = [persistence._serialize_param_builtin(v) for v in values]
        assert serialize_params_lazily()
        assert [persistence._serialize_param(v) for v in values] == builtin
        assert "pandas" not in sys.modules
        import pandas as pd
        frame = pd.DataFrame({"a": [1, 2]})
        assert persistence._serialize_param(frame) == persistence._serialize_param_pandas(frame)
        assert persistence._serialize_param(frame) != persistence._serialize_param_builtin(frame)
        assert [persistence._serialize_param(v) for v in values] == builtin
        print("ok")
    """)
    assert out == "ok"


def test_the_reevaluation_timer_still_wakes_the_scheduler_and_exit_does_not_wait_for_it():
    # Unpatched, the second (600 s) timer would hold this interpreter for ten minutes: the timeout fails the test.
    out = run_python("""
        import threading
        from types import SimpleNamespace
        from snakemake.scheduling.job_scheduler import JobScheduler
        from portcheck.workflow.snakemake_overheads import exit_without_waiting

        assert exit_without_waiting()
        scheduler = SimpleNamespace(_open_jobs=threading.Semaphore(0))
        JobScheduler._schedule_reevalutation(scheduler, 0.05)
        assert scheduler._open_jobs.acquire(timeout=30), "the timer did not wake the scheduler"
        JobScheduler._schedule_reevalutation(scheduler, 600)
        timers = [t for t in threading.enumerate() if isinstance(t, threading.Timer)]  # the first may linger
        print(bool(timers) and all(t.daemon for t in timers))
    """, timeout=60)
    assert out == "True"


def test_a_snakemake_without_the_replaced_names_is_left_as_it_is(monkeypatch):
    from snakemake.persistence import PersistenceBase
    from snakemake.scheduling.job_scheduler import JobScheduler

    from portcheck.workflow import snakemake_overheads

    import snakemake.api  # noqa: F401  (snakemake.workflow cannot be imported first)
    import snakemake.workflow as snakemake_workflow
    from snakemake.common import configfile

    monkeypatch.delattr(PersistenceBase, "_serialize_param_pandas")
    monkeypatch.delattr(JobScheduler, snakemake_overheads.REEVALUATION)
    monkeypatch.delattr(configfile, snakemake_overheads.CONFIG_LOADER)
    parse = lambda path, workflow, linemap: ("", 0)  # noqa: E731  (a parser of another signature)
    monkeypatch.setattr(snakemake_workflow, snakemake_overheads.PARSER, parse)
    serializer = PersistenceBase.__dict__["_serialize_param"]
    assert snakemake_overheads.remove_overheads() == {"params_without_pandas": False, "exit_without_waiting": False,
                                                      "config_with_libyaml": False,
                                                      "rule_files_translated_once": False}
    assert PersistenceBase.__dict__["_serialize_param"] is serializer
    assert not hasattr(JobScheduler, snakemake_overheads.REEVALUATION)
    assert not hasattr(configfile, snakemake_overheads.CONFIG_LOADER)
    assert snakemake_workflow.parse is parse
    monkeypatch.delattr(snakemake_workflow, snakemake_overheads.PARSER)
    assert not snakemake_overheads.keep_translations()


def test_config_files_read_as_snakemake_reads_them(tmp_path):
    """The shipped configs, a JSON config, one asking for yte's templating and a broken one: each gives what
    Snakemake's own loader gives (the same document, or the same error), and only the plain YAML ones are parsed
    by libyaml."""
    (tmp_path / "plain.yaml").write_text("a: 1\nb: [x, {c: 2.5}]\nd: yes\ne: null\n")
    (tmp_path / "config.json").write_text('{"a": 1, "b": {"c": [1, 2]}}')
    (tmp_path / "template.yaml").write_text("__use_yte__: true\n?if True:\n  a: ?1 + 1\n")
    (tmp_path / "broken.yaml").write_text("a: [1,\n  b: 2\n")
    (tmp_path / "latin1.yaml").write_bytes("a: \xe9\n".encode("latin-1"))
    written = ("plain.yaml", "config.json", "template.yaml", "broken.yaml", "latin1.yaml")
    paths = [ROOT / "config" / "config.yaml", ROOT / ".test" / "config.yaml", *(tmp_path / name for name in written)]
    out = run_python(f"""
        import yaml
        from snakemake.common import configfile

        def read(path):
            try:
                return repr(configfile.load_configfile(path))
            except Exception as error:
                return type(error).__name__ + ": " + str(error)

        paths = {[str(p) for p in paths]!r}
        theirs = [read(path) for path in paths]
        from portcheck.workflow.snakemake_overheads import load_configs_with_libyaml
        assert load_configs_with_libyaml() and load_configs_with_libyaml()  # a second call keeps the first patch
        assert configfile._load_configfile.snakemake_loader.__module__ == "snakemake.common.configfile"
        parsed, loader = [], yaml.CFullLoader
        count = lambda self, stream: parsed.append(1) or loader.__init__(self, stream)
        yaml.CFullLoader = type("Counting", (loader,), {{"__init__": count}})
        ours = [read(path) for path in paths]
        print(theirs == ours, len(parsed), theirs[4], theirs[5][:40])
    """)
    assert out.startswith("True 5 {'a': 2} WorkflowError: Config file is not valid"), out


def test_rule_files_are_translated_once_and_again_when_they_change(tmp_path):
    """Each shipped rule file's kept translation is Snakemake's own (the code, the rule count after it, the line
    map); a second run translates nothing; an edited file, another rule count before it and a damaged entry are
    translated anew."""
    rule_files = sorted(str(path) for path in (ROOT / "rules").glob("*.smk"))
    out = run_python(f"""
        from pathlib import Path
        import snakemake.api
        import snakemake.workflow as snakemake_workflow
        from snakemake.parser import parse
        from snakemake.sourcecache import LocalSourceFile
        from portcheck.workflow.snakemake_overheads import keep_translations

        class Workflow:  # what parse asks of a workflow: its source cache
            class sourcecache:
                open = staticmethod(lambda path: open(path.get_path_or_uri(secret_free=True)))

        def translate_all(translate, files):
            count, results = 0, []
            for name in files:
                linemap = {{}}
                code, count = translate(LocalSourceFile(name), Workflow, linemap=linemap, rulecount=count)
                results.append((code, count, linemap))
            return results

        files = {rule_files!r}
        theirs = translate_all(parse, files)
        calls = []

        def counted(path, workflow, linemap, overwrite_shellcmd=None, rulecount=0):
            calls.append(1)
            return parse(path, workflow, linemap, overwrite_shellcmd, rulecount)

        snakemake_workflow.parse = counted
        cache = Path({str(tmp_path)!r}) / "parsed"
        assert keep_translations(cache) and keep_translations(cache)  # a second call keeps the first patch
        kept = snakemake_workflow.parse
        first, second = translate_all(kept, files), translate_all(kept, files)
        print(first == theirs == second, len(calls), len(list(cache.iterdir())))

        edited = Path({str(tmp_path)!r}) / "extra.smk"
        edited.write_text(Path(files[0]).read_text())
        translate_all(kept, [str(edited)])
        edited.write_text(edited.read_text() + "\\nrule added_here:\\n    output: 'x'\\n")
        calls.clear()
        again = translate_all(kept, [str(edited)])
        print(again == translate_all(parse, [str(edited)]), "added_here" in again[0][0], len(calls))
        shifted = kept(LocalSourceFile(files[1]), Workflow, linemap={{}}, rulecount=5)
        print(shifted == parse(LocalSourceFile(files[1]), Workflow, linemap={{}}, rulecount=5), len(calls))
        for damaged in ("{{not json", '{{"key": 1}}', "[]"):
            for entry in cache.iterdir():
                entry.write_text(damaged)
            calls.clear()
            print(translate_all(kept, files) == theirs, len(calls) == len(files))
    """)
    lines = out.splitlines()
    assert lines[0] == f"True {len(rule_files)} {len(rule_files)}", out
    assert lines[1:3] == ["True True 1", "True 2"], out
    assert lines[3:] == ["True True"] * 3, out
