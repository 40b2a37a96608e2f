"""Code lineage: the modules each stage runs (its import closure inside src/slmforge), checked against its
dependencies in dvc.yaml, so that editing any of them makes DVC re-run the stage.

The closure follows every `import slmforge...` at any depth of a module (imports inside functions included: a
backend loaded on demand still shapes the output), and the `__init__.py` of every package on the way when it
runs code (one holding only a docstring and literal constants cannot change what a stage computes).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = "slmforge"
STAGE_CMD = re.compile(r"python -m (stages\.\w+)")


def module_file(src: Path, name: str) -> Path | None:
    """The file of module `name` (a.b.c) under src/, or None when it is not one of ours."""
    base = src.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def runs_code(path: Path) -> bool:
    """Whether a module does anything but hold a docstring and literal constants."""
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and isinstance(node.value, ast.Constant):
            continue
        return True
    return False


def imported_names(path: Path, module: str) -> set[str]:
    """Every module name `path` (module `module`) imports, at any depth; `from a import b` gives a and a.b
    (b may be a submodule)."""
    names: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the module's own package upwards
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return {n for n in names if n == PACKAGE or n.startswith(PACKAGE + ".")}


def import_closure(root: Path, entry: Path) -> set[str]:
    """Repository-relative paths of `entry` and of every src/slmforge module it imports, transitively."""
    src = root / "src"
    seen: dict[Path, str] = {entry: entry.relative_to(root).with_suffix("").as_posix().replace("/", ".")}
    todo = [entry]
    while todo:
        path = todo.pop()
        for name in imported_names(path, seen[path]):
            parts = name.split(".")
            # Importing a.b.c runs a/__init__.py and a/b/__init__.py first.
            for k in range(1, len(parts) + 1):
                target = module_file(src, ".".join(parts[:k]))
                if target is None or target in seen:
                    continue
                if k < len(parts) and target.name == "__init__.py" and not runs_code(target):
                    continue  # passed through, runs nothing (an explicit import of it is kept below)
                seen[target] = ".".join(parts[:k])
                todo.append(target)
    return {p.relative_to(root).as_posix() for p in seen}


def stage_entry(root: Path, cmd: str) -> Path | None:
    """stages/NAME.py of a `python -m stages.NAME ...` command."""
    match = STAGE_CMD.search(cmd)
    return root / (match.group(1).replace(".", "/") + ".py") if match else None


def resolved_stages(root: Path) -> dict[str, tuple[str, list[str]]]:
    """Each stage of dvc.yaml as DVC resolves it against params.yaml (foreach expanded): name -> (cmd, deps)."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return {stage.name: (stage.cmd if isinstance(stage.cmd, str) else " ".join(stage.cmd),
                                   [dep.def_path for dep in stage.deps])
                for stage in repo.index.stages if getattr(stage, "cmd", None)}


def covered(path: str, deps: list[str]) -> bool:
    return any(path == d.rstrip("/") or path.startswith(d.rstrip("/") + "/") for d in deps)


def missing_code_deps(root: Path, stages: dict[str, tuple[str, list[str]]] | None = None,
                      exempt: set[str] = frozenset()) -> dict[str, list[str]]:
    """stage -> the modules of its import closure that none of its dvc.yaml deps covers (empty stages left out).
    `exempt`: stages deliberately without code deps (a live source's pull)."""
    stages = resolved_stages(root) if stages is None else stages
    missing: dict[str, list[str]] = {}
    for name, (cmd, deps) in sorted(stages.items()):
        entry = stage_entry(root, cmd)
        if name in exempt or entry is None:
            continue
        gaps = sorted(p for p in import_closure(root, entry) if not covered(p, deps))
        if gaps:
            missing[name] = gaps
    return missing
