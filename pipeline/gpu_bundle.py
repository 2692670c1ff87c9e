"""The wheels a bare GPU machine needs to run `make gpu-check` (issue 20), resolved from the check's import chain.

    make gpu-bundle                      # .whl/: wheels for CPython 3.12 manylinux x86-64 (PYVER=3.11 for another)
    python -m pipeline.gpu_bundle show   # what would go in, and why
    python -m pipeline.gpu_bundle preflight   # on the GPU machine: one line naming what is missing, exit 2

The GPU machine (cluster/gpu-machine-packages.txt: its package names) has a CUDA torch and no package index.
The check's import chain is read from the sources with ``ast``, not from a hand list: pipeline/bench_gpu.py,
tests/conftest.py and the test files holding ``cuda``-marked tests, every ``import`` at any depth (function-level
ones too) and ``pytest.importorskip("...")``, following the project's own modules. Its third-party modules are
mapped to the distributions installed here, closed over their ``Requires-Dist`` (markers evaluated for the
target Python, extras skipped), and the distributions the machine already has are dropped. What is left is
downloaded at the versions installed here (one each), as the device tool's README says, and listed in
``MANIFEST.txt`` with its size and the reason it is in.

This module imports only the standard library at its top: the preflight runs where pydantic and the rest are
missing.
"""

from __future__ import annotations

import argparse
import ast
import datetime as _dt
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROJECT = ("keyhand", "trainers", "pipeline", "dashboards")
MACHINE_FILE = REPO / "cluster" / "gpu-machine-packages.txt"
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")
_CUDA_MARK = re.compile(r"mark\.cuda\b")


def norm(name: str) -> str:
    """A distribution name normalised as PEP 503 does."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _marks_cuda(path: Path) -> bool:
    """Whether the code of ``path`` uses ``mark.cuda`` (a decorator, ``pytestmark``, ``marks=``); text in strings
    and docstrings does not count. A file that does not parse is matched on its text."""
    text = path.read_text()
    if not _CUDA_MARK.search(text):
        return False
    try:
        tree = ast.parse(text, str(path))
    except SyntaxError:
        return True
    return any(isinstance(n, ast.Attribute) and n.attr == "cuda" and isinstance(n.value, ast.Attribute)
               and n.value.attr == "mark" for n in ast.walk(tree))


def cuda_test_files(tests_dir: str | Path) -> list[Path]:
    """The test files that hold ``cuda``-marked tests (``pytest.mark.cuda`` in their code)."""
    return sorted(p for p in Path(tests_dir).glob("test_*.py") if _marks_cuda(p))


def _module_file(repo: Path, name: str) -> Path | None:
    base = repo.joinpath(*name.split("."))
    for f in (base / "__init__.py", base.with_suffix(".py")):
        if f.is_file():
            return f
    return None


def _imports(path: Path, modname: str) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text(), str(path))
    out: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = modname.split(".")[: -1 if path.name != "__init__.py" else None]
                parts = parts[: len(parts) - (node.level - 1)]
                mod = ".".join(parts + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.append((mod, node.lineno))
            out += [(f"{mod}.{a.name}", node.lineno) for a in node.names]   # a submodule imported by name
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "importorskip"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            out.append((node.args[0].value, node.lineno))
    return out


def chain_modules(repo: str | Path = REPO) -> dict[str, list[str]]:
    """Third-party top-level modules of the check's import chain -> where each is imported ("module:line")."""
    repo = Path(repo)
    todo = [("pipeline.bench_gpu", repo / "pipeline" / "bench_gpu.py"), ("conftest", repo / "tests" / "conftest.py")]
    todo += [(p.stem, p) for p in cuda_test_files(repo / "tests")]
    seen: set[str] = set()
    third: dict[str, list[str]] = {}
    while todo:
        name, path = todo.pop()
        if name in seen or not path.is_file():
            continue
        seen.add(name)
        for mod, line in _imports(path, name):
            top = mod.split(".")[0]
            if not top or top == "__future__" or top in sys.stdlib_module_names:
                continue
            if top in PROJECT:   # the module and the packages above it (their __init__.py runs first)
                parts = mod.split(".")
                for sub in (".".join(parts[:i]) for i in range(1, len(parts) + 1)):
                    f = _module_file(repo, sub)
                    if f is not None and sub not in seen:
                        todo.append((sub, f))
            elif (where := f"{name}:{line}") not in third.setdefault(top, []):
                third[top].append(where)
    return {k: sorted(v) for k, v in sorted(third.items())}


def missing_modules(repo: str | Path = REPO) -> list[str]:
    """The chain's top-level modules that this interpreter cannot find."""
    return [m for m in chain_modules(repo) if importlib.util.find_spec(m) is None]


def machine_packages(path: str | Path = MACHINE_FILE) -> set[str]:
    lines = Path(path).read_text().splitlines()
    return {norm(x.strip()) for x in lines if x.strip() and not x.lstrip().startswith("#")}


def bundle_plan(repo: str | Path = REPO, machine: str | Path = MACHINE_FILE,
                python_version: str = "3.12") -> dict[str, dict]:
    """{normalised name: {"name", "version", "why"}} of the distributions to carry (module docstring)."""
    from importlib import metadata

    from packaging.markers import default_environment
    from packaging.requirements import Requirement

    env = {**default_environment(), "python_version": python_version, "python_full_version": f"{python_version}.0",
           "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
           "implementation_name": "cpython", "extra": ""}
    have = machine_packages(machine)
    top_to_dist = metadata.packages_distributions()
    todo: list[tuple[str, str]] = []
    for mod, where in chain_modules(repo).items():
        dists = top_to_dist.get(mod)
        if not dists:
            raise ValueError(f"gpu-bundle: module {mod!r} (imported at {where[0]}) is not installed here: "
                             "run make install first")
        todo += [(d, f"imports {mod} ({where[0]})") for d in dists]
    plan: dict[str, dict] = {}
    done: set[str] = set()
    while todo:
        dist, why = todo.pop(0)
        key = norm(dist)
        if key in done:
            continue
        done.add(key)
        if key in have:
            continue
        try:
            md = metadata.distribution(dist)
        except metadata.PackageNotFoundError:
            raise ValueError(f"gpu-bundle: {dist} ({why}) is not installed here: run make install first") from None
        plan[key] = {"name": md.metadata["Name"], "version": md.version, "why": why}
        for text in md.requires or []:
            req = Requirement(text)
            if req.marker is not None and not req.marker.evaluate(env):
                continue   # an extra's requirement, or another Python's / platform's
            todo.append((req.name, f"required by {md.metadata['Name']}"))
    return dict(sorted(plan.items()))


def write_bundle(dest: str | Path, plan: dict[str, dict], python_version: str = "3.12") -> str:
    """Download the plan's wheels into ``dest`` (stale wheels removed) and write ``dest/MANIFEST.txt``."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    specs = [f"{p['name']}=={p['version']}" for p in plan.values()]
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
           "--python-version", python_version, "--implementation", "cp",
           *[a for plat in PLATFORMS for a in ("--platform", plat)], "-d", str(dest), *specs]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        last = (proc.stderr.strip().splitlines() or ["pip download failed"])[-1]
        raise ValueError(f"gpu-bundle: pip download for Python {python_version}: {last} (a wheel built for another "
                         "manylinux_2_N_x86_64 may need one more --platform in pipeline/gpu_bundle.PLATFORMS)")
    rows, total, keep = [], 0, set()
    for key, p in plan.items():
        wheels = [w for w in dest.glob("*.whl") if norm(w.name.split("-")[0]) == key
                  and w.name.split("-")[1] == p["version"]]
        if not wheels:
            raise ValueError(f"gpu-bundle: no wheel of {p['name']}=={p['version']} in {dest}")
        w = wheels[0]
        keep.add(w.name)
        total += w.stat().st_size
        rows.append(f"{p['name']:<22} {p['version']:<10} {w.stat().st_size / 1e6:6.2f} MB  {w.name}  ({p['why']})")
    for w in dest.glob("*.whl"):
        if w.name not in keep:  # a second version would stop the whole install
            w.unlink()
    text = "\n".join([f"# make gpu-bundle: wheels for CPython {python_version} manylinux x86-64, "
                      f"{_dt.date.today().isoformat()}; install: make gpu-check (pip --no-index --no-deps)",
                      *rows, f"# {len(rows)} wheels, {total / 1e6:.1f} MB"]) + "\n"
    (dest / "MANIFEST.txt").write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.gpu_bundle", description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=("write", "show", "preflight"))
    ap.add_argument("--dest", default=str(REPO / ".whl"))
    ap.add_argument("--python-version", default="3.12")
    a = ap.parse_args(argv)
    if a.what == "preflight":
        try:
            missing = missing_modules()
        except Exception as exc:   # one line, never a traceback
            print(f"gpu-check: preflight could not read the check's import chain: {type(exc).__name__}: {exc}",
                  file=sys.stderr)
            return 2
        if missing:
            print(f"gpu-check: {sys.executable} (Python {sys.version.split()[0]}) lacks {', '.join(missing)}: run "
                  "`make gpu-bundle` where pip reaches PyPI and copy .whl/ here (docs/gpu.md)", file=sys.stderr)
            return 2
        return 0
    try:
        plan = bundle_plan(python_version=a.python_version)
        if a.what == "show":
            for p in plan.values():
                print(f"{p['name']}=={p['version']}  ({p['why']})")
            return 0
        print(write_bundle(a.dest, plan, a.python_version), end="")
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
