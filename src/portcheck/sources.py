"""Which package files a rule runs: a module plus everything it imports from the package, transitively.
Rules declare these as input, so editing any of them reruns exactly the rules that run it."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def module_file(module: str, package_dir: Path = PACKAGE_DIR) -> Path:
    """'engines.hf' -> .../engines/hf.py; a package -> its __init__.py."""
    base = package_dir.joinpath(*module.split(".")) if module else package_dir
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def _imported_modules(module: str, package_dir: Path) -> set[str]:
    path = module_file(module, package_dir)
    package = module.rsplit(".", 1)[0] if "." in module and path.name != "__init__.py" else ""
    if path.name == "__init__.py":
        package = module
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level:
            parts = package.split(".") if package else []
            base = ".".join(parts[: len(parts) - (node.level - 1)])
            target = ".".join(p for p in (base, node.module or "") if p)
            found.add(target)
            found.update(f"{target}.{a.name}".lstrip(".") for a in node.names if module_file(f"{target}.{a.name}".lstrip("."), package_dir).exists())
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("portcheck"):
            found.add(node.module.removeprefix("portcheck").lstrip("."))
    return {m for m in found if module_file(m, package_dir).exists()}


def module_closure(*modules: str, package_dir: Path = PACKAGE_DIR) -> list[Path]:
    """The files of `modules` and every package module they import (also inside functions), with parents' __init__."""
    seen: set[str] = set()
    pending = list(modules)
    while pending:
        module = pending.pop()
        if module in seen:
            continue
        seen.add(module)
        parents = [".".join(module.split(".")[:i]) for i in range(len(module.split(".")))]
        pending.extend(_imported_modules(module, package_dir) | set(parents))
    return sorted({module_file(m, package_dir) for m in seen})
