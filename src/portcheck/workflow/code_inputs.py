"""Which package files a rule runs: a module plus everything it imports from the package, transitively (also
imports inside functions), with the parent packages' __init__.py. Rules declare these as input, so editing any
of them reruns exactly the rules that run it.

Modules are named by their dotted path under portcheck ("dump.run"). `exclude` names modules or whole
subpackages ("engines.vllm") a rule does not run, e.g. the other engine; the walk does not enter them.
Every file is parsed once per process, and each closure walked once (Snakemake asks for each job's inputs again
and again); the workflow keeps what each file imports between runs (remember_imports)."""

from __future__ import annotations

import ast
import functools
import json
import re
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]
PACKAGE = PACKAGE_DIR.name
# (file, its mtime, its size) -> the package modules it imports: a file edited while a process runs is parsed again.
_IMPORTS_CACHE: dict[tuple[Path, int, int], frozenset[str]] = {}


def module_file(module: str, package_dir: Path = PACKAGE_DIR) -> Path:
    """'engines.hf' -> .../engines/hf.py; a package -> its __init__.py; '' -> the package's __init__.py."""
    base = package_dir.joinpath(*module.split(".")) if module else package_dir
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


@functools.lru_cache(maxsize=None)
def _package_files(package_dir: Path) -> dict[str, Path]:
    """Every module of the package by dotted name ('' for the package), from one directory walk: the closures ask
    for a module's file thousands of times, and two stats each were a tenth of a no-op run."""
    files = {}
    for path in package_dir.rglob("*.py"):
        parts = path.relative_to(package_dir).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return files


def _exists(module: str, package_dir: Path) -> bool:
    return module in _package_files(package_dir)


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str | None:
    """The package-relative module an ImportFrom names (None: outside the package)."""
    if node.level:
        parts = module.split(".") if module else []
        package = parts if is_package else parts[:-1]
        base = package[: len(package) - (node.level - 1)]
        return ".".join([*base, *([node.module] if node.module else [])])
    name = node.module or ""
    if name == PACKAGE or name.startswith(PACKAGE + "."):
        return name[len(PACKAGE):].lstrip(".")
    return None


def imported_modules(module: str, package_dir: Path = PACKAGE_DIR) -> frozenset[str]:
    """The package modules `module` imports (`from portcheck.x import y` counts y when y is a module)."""
    path = _package_files(package_dir).get(module) or module_file(module, package_dir)
    key = _cache_key(path)
    if key not in _IMPORTS_CACHE:
        found: set[str] = set()
        for node in _import_nodes(path.read_text(encoding="utf-8")):
            if isinstance(node, ast.ImportFrom):
                target = _absolute(node, module, path.name == "__init__.py")
                if target is None:
                    continue
                found.add(target)
                found.update(f"{target}.{alias.name}".lstrip(".") for alias in node.names)
            else:
                found.update(a.name[len(PACKAGE):].lstrip(".") for a in node.names
                             if a.name == PACKAGE or a.name.startswith(PACKAGE + "."))
        _IMPORTS_CACHE[key] = frozenset(m for m in found if _exists(m, package_dir))
    return _IMPORTS_CACHE[key]


def _cache_key(path: Path) -> tuple[Path, int, int]:
    stat = path.stat()
    return path, stat.st_mtime_ns, stat.st_size


def remember_imports(cache_path: str | Path, package_dir: Path = PACKAGE_DIR) -> None:
    """What each package file imports, kept in `cache_path` (JSON) while the file's mtime and size stay the same and
    rewritten when one changed: a no-op run then parses no source file (that was 34 ms of a 1.5 s no-op run). A
    cache that does not read as one is parsed again."""
    from portcheck.atomic import write_json

    cache_path = Path(cache_path)
    try:
        stored = json.loads(cache_path.read_text(encoding="utf-8"))
        for name, (mtime_ns, size, modules) in stored.items():
            _IMPORTS_CACHE.setdefault((package_dir / name, mtime_ns, size), frozenset(modules))
    except (OSError, ValueError, TypeError, AttributeError):  # no cache, or not one (not JSON, not a mapping)
        stored = None
    entries = {}
    for module, path in sorted(_package_files(package_dir).items()):
        key = _cache_key(path)
        entries[str(path.relative_to(package_dir))] = [*key[1:], sorted(imported_modules(module, package_dir))]
    if entries != stored:
        write_json(cache_path, entries)


_IMPORT_START = re.compile(r"\s*(from\s+\S+\s+import\b|import\s)")


def _import_nodes(text: str):
    """Every import statement, at any depth (imports inside functions count), parsed alone: parsing and walking
    whole modules was most of a no-op run's cost. A docstring line that reads like an import only adds a
    dependency (one rerun too many, never one too few)."""
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        if _IMPORT_START.match(lines[index]):
            statement = [lines[index].strip()]
            depth = statement[0].count("(") - statement[0].count(")")
            while (depth > 0 or statement[-1].endswith("\\")) and index + 1 < len(lines):
                index += 1
                statement.append(lines[index].strip())
                depth += statement[-1].count("(") - statement[-1].count(")")
            try:
                yield from (n for n in ast.parse(" ".join(s.rstrip("\\") for s in statement)).body
                            if isinstance(n, (ast.Import, ast.ImportFrom)))
            except SyntaxError:
                pass
        index += 1


def _excluded(module: str, exclude: tuple[str, ...]) -> bool:
    return any(module == e or module.startswith(e + ".") for e in exclude)


def module_closure(*modules: str, exclude: tuple[str, ...] = (), package_dir: Path = PACKAGE_DIR) -> list[Path]:
    """The files of `modules` and every package module they import, transitively, minus `exclude`. Walked once
    per process and arguments: Snakemake asks each job's input functions again and again (the walk was 0.4 s of
    a 1.7 s no-op run)."""
    return list(_closure(tuple(modules), tuple(exclude), package_dir))


@functools.lru_cache(maxsize=None)
def _import_graph(package_dir: Path) -> dict[str, frozenset[str]]:
    """What each module of the package imports, read once per process for all the closures asked for."""
    return {module: imported_modules(module, package_dir) for module in _package_files(package_dir)}


@functools.lru_cache(maxsize=None)
def _closure(modules: tuple[str, ...], exclude: tuple[str, ...], package_dir: Path) -> tuple[Path, ...]:
    imports = _import_graph(package_dir)
    unknown = [m for m in modules if not _exists(m, package_dir)]
    if unknown:  # a misspelt module in a rule: refused while the workflow is parsed
        raise FileNotFoundError(f"no module {', '.join(unknown)} in {package_dir}")
    seen: set[str] = set()
    pending = list(modules)
    while pending:
        module = pending.pop()
        if module in seen or _excluded(module, exclude):
            continue
        seen.add(module)
        parts = module.split(".") if module else []
        parents = {".".join(parts[:i]) for i in range(len(parts))}
        pending.extend(imports.get(module, frozenset()) | parents)
    files = _package_files(package_dir)
    return tuple(sorted({files[m] for m in seen if m in files}))  # a namespace package has no file
