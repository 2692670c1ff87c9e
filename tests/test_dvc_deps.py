"""dvc.yaml: every stage depends on every project file its entry imports (transitively), and on no tracking or
cluster setting — so that editing code re-runs exactly the stages that run it, and pointing at another MLflow
server or Ray cluster re-runs nothing.

The walk is static and over-approximate: every ``import`` in a module counts, also those inside functions
(the stages import lazily), and importing ``a.b.c`` runs ``a/__init__.py`` and ``a/b/__init__.py`` too.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("keyhand", "trainers", "pipeline", "dashboards")
#: Settings that say where work runs or is recorded, never what it computes.
NOT_COMPUTATION = ("mlflow", "ray")


def _module_file(name: str) -> Path | None:
    base = ROOT / Path(*name.split("."))
    for cand in (base.with_suffix(".py"), base / "__init__.py"):
        if cand.is_file():
            return cand
    return None


def _imports(path: Path) -> set[str]:
    """Project modules ``path`` imports anywhere in its body (with their parent packages)."""
    tree = ast.parse(path.read_text(), str(path))
    rel = path.relative_to(ROOT).with_suffix("")
    package = list(rel.parts[:-1]) if rel.name != "__init__" else list(rel.parts[:-1])
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                mod = ".".join([*base, node.module] if node.module else base)
            else:
                mod = node.module or ""
            names.add(mod)
            names.update(f"{mod}.{a.name}" for a in node.names)  # "from pkg import submodule"
    out = set()
    for name in names:
        parts = name.split(".")
        if parts[0] not in PACKAGES:
            continue
        for i in range(1, len(parts) + 1):
            if _module_file(".".join(parts[:i])) is not None:
                out.add(".".join(parts[:i]))
    return out


def closure(module: str) -> dict[Path, str]:
    """Every project file ``module`` imports, transitively: {file: the module that first imported it}."""
    seen: dict[Path, str] = {}
    todo = [(module, "(entry)")]
    while todo:
        name, by = todo.pop()
        path = _module_file(name)
        if path is None or path in seen:
            continue
        seen[path] = by
        todo.extend((m, name) for m in _imports(path))
    return seen


def _stages() -> list[tuple[str, dict]]:
    """(name, stage) of dvc.yaml with ``foreach`` groups expanded (``${item}`` substituted)."""
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    out = []
    for name, st in spec.items():
        if "foreach" in st:
            for item in st["foreach"]:
                text = yaml.safe_dump(st["do"]).replace("${item}", str(item))
                out.append((f"{name}@{item}", yaml.safe_load(text)))
        else:
            out.append((name, st))
    return out


def _entry_module(cmd: str) -> str:
    """The module of the function ``keyhand stage <name> [role]`` runs."""
    from pipeline.stages import STAGES

    words = cmd.split()
    assert words[:2] == ["keyhand", "stage"], f"stage command {cmd!r} is not `keyhand stage ...`"
    return STAGES[words[2]].split(":")[0]


def _dep_paths(st: dict) -> list[str]:
    return [next(iter(d)) if isinstance(d, dict) else str(d) for d in st.get("deps", [])]


def _covered(path: Path, deps: list[str]) -> bool:
    rel = path.relative_to(ROOT).as_posix()
    return any(rel == d.rstrip("/") or rel.startswith(d.rstrip("/") + "/") for d in deps)


@pytest.mark.parametrize("name, stage", _stages(), ids=[n for n, _ in _stages()])
def test_stage_deps_cover_every_imported_project_file(name: str, stage: dict) -> None:
    entry = _entry_module(stage["cmd"])
    deps = _dep_paths(stage)
    missing = {p: by for p, by in closure(entry).items() if not _covered(p, deps)}
    assert not missing, f"dvc.yaml stage {name} (entry {entry}): no dep covers " + ", ".join(
        f"{p.relative_to(ROOT)} (imported by {by})" for p, by in sorted(missing.items()))


@pytest.mark.parametrize("name, stage", _stages(), ids=[n for n, _ in _stages()])
def test_no_tracking_or_cluster_setting_is_a_param_dep(name: str, stage: dict) -> None:
    params = []
    for p in stage.get("params", []):
        params.extend(p if isinstance(p, dict) else [p])
    wrong = [p for p in params if str(p).split(".")[0] in NOT_COMPUTATION]
    assert not wrong, f"dvc.yaml stage {name}: {wrong} say where work runs or is recorded, not what it computes"


def test_every_param_dep_names_a_key_of_params_yaml() -> None:
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    for name, stage in _stages():
        for p in stage.get("params", []):
            node = data
            for part in str(p).split("."):
                assert isinstance(node, dict) and part in node, f"dvc.yaml stage {name}: params.yaml has no {p}"
                node = node[part]


def test_the_walk_sees_lazy_imports(tmp_path: Path) -> None:
    """The walker itself: the training stage's lazy ``from trainers.run import fit_stage`` reaches the loop."""
    files = {p.relative_to(ROOT).as_posix() for p in closure("pipeline.stages.training")}
    assert {"trainers/run.py", "trainers/train.py", "trainers/config.py", "keyhand/model/framework.py",
            "keyhand/data/cache.py", "keyhand/__init__.py"} <= files
    assert importlib.import_module("pipeline.stages.training")
