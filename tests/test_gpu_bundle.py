"""The wheel bundle a bare GPU machine needs for `make gpu-check` (pipeline/gpu_bundle.py, issue 20): the check's
import chain read from the sources, the plan (chain -> distributions -> Requires-Dist closure -> minus the GPU
machine's packages), the download and MANIFEST.txt, and the one-line preflight. The whole path on a bare venv
holding only the GPU machine's package set (`make gpu-bundle`, then `make gpu-check` on CPU) is
tests/test_gpu_check.py's shared run.
"""

from __future__ import annotations

import importlib.metadata as md
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import gpu_bundle as gb

REPO = Path(__file__).resolve().parents[1]
#: What the GPU machine lacks of the check's chain, and what carrying it takes (cluster/gpu-machine-packages.txt).
MISSING = {"albumentations", "pydantic", "smplx"}
BUNDLE = {"pydantic", "pydantic-core", "annotated-types", "typing-inspection", "albumentations", "albucore",
          "simsimd", "stringzilla", "smplx"}


# --- the import chain -------------------------------------------------------------------------------------------

def test_chain_of_the_real_check() -> None:
    chain = gb.chain_modules(REPO)
    assert {"torch", "numpy", "pydantic", "albumentations", "smplx", "pytest", "yaml"} <= set(chain)
    assert not set(chain) & (set(sys.stdlib_module_names) | set(gb.PROJECT) | {"__future__", "conftest", "tests"})
    assert all(re.fullmatch(r"[\w.]+:\d+", w) for ws in chain.values() for w in ws)
    # every reason names a file and a line that imports the module (pytest.importorskip("...") included)
    for top, wheres in chain.items():
        for where in wheres:
            mod, line = where.split(":")
            src = gb._module_file(REPO, mod) or REPO / "tests" / f"{mod}.py"
            text = src.read_text().splitlines()[int(line) - 1]
            assert "import" in text and re.search(rf"\b{top}\b", text), (where, text)
    # smplx only through pytest.importorskip("smplx") in a cuda-marked test file
    files = gb.cuda_test_files(REPO / "tests")
    assert files and all("mark.cuda" in f.read_text() for f in files)
    skips = [f"{f.stem}:{i}" for f in files for i, line in enumerate(f.read_text().splitlines(), 1)
             if 'importorskip("smplx")' in line]
    assert skips and set(skips) <= set(chain["smplx"])


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


def test_chain_follows_every_kind_of_import(tmp_path: Path) -> None:
    _write(tmp_path, {
        "pipeline/__init__.py": "",
        "pipeline/bench_gpu.py": ("from __future__ import annotations\nimport os, json\nfrom . import helper\n"
                                  "from keyhand.sub import mod\n\ndef run():\n    import alpha.beta\n"),
        "pipeline/helper.py": "from .deep.leaf import x\n",
        "pipeline/deep/__init__.py": "",
        "pipeline/deep/leaf.py": "from ..helper import nothing\nimport beta_pkg\nx = 1\n",
        "keyhand/__init__.py": "import from_parent_init\n",
        "keyhand/sub/__init__.py": "",
        "keyhand/sub/mod.py": "class C:\n    def m(self):\n        from gamma import g\n",
        "keyhand/unused.py": "import never_reached\n",
        "tests/conftest.py": "import pytest\n",
        "tests/test_gpu.py": "import pytest\npytestmark = pytest.mark.cuda\ndelta = pytest.importorskip('delta')\n",
        "tests/test_plain.py": "import epsilon\n'only text: pytest.mark.cuda'\n",
        "tests/test_broken.py": "def f(:\n    pytest.mark.cuda\n",
    })
    assert [p.name for p in gb.cuda_test_files(tmp_path / "tests")] == ["test_broken.py", "test_gpu.py"]
    (tmp_path / "tests" / "test_broken.py").unlink()
    chain = gb.chain_modules(tmp_path)
    assert set(chain) == {"alpha", "beta_pkg", "from_parent_init", "gamma", "pytest", "delta"}
    assert chain["alpha"] == ["pipeline.bench_gpu:7"]                        # function level
    assert chain["beta_pkg"] == ["pipeline.deep.leaf:2"]                     # relative imports, two deep
    assert chain["gamma"] == ["keyhand.sub.mod:3"]                           # `from pkg import submodule`
    assert chain["from_parent_init"] == ["keyhand:1"]                        # the package above runs first
    assert chain["delta"] == ["test_gpu:3"] and chain["pytest"] == ["conftest:1", "test_gpu:1"]


# --- the plan ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def plan312() -> dict[str, dict]:
    return gb.bundle_plan(REPO, gb.MACHINE_FILE, "3.12")


def test_plan_on_the_real_machine_list(plan312: dict[str, dict]) -> None:
    have = gb.machine_packages(gb.MACHINE_FILE)
    assert len(have) > 190 and {"torch", "numpy", "typing-extensions", "opencv-python-headless", "pip"} <= have
    assert BUNDLE <= set(plan312), plan312
    assert not set(plan312) & have                                           # nothing the machine has
    for key, p in plan312.items():
        assert gb.norm(p["name"]) == key and p["version"] == md.version(p["name"])   # one version: installed here
        m = re.fullmatch(r"imports (\w+) \(([\w.]+:\d+)\)|required by (.+)", p["why"])
        assert m, p["why"]
        assert m[3] is None or gb.norm(m[3]) in plan312                      # required by something carried
    assert "email-validator" not in plan312                                 # pydantic's extra


def test_plan_evaluates_markers_for_the_target_python(tmp_path: Path) -> None:
    _write(tmp_path, {"pipeline/bench_gpu.py": "import albucore\n"})
    machine = tmp_path / "machine.txt"
    machine.write_text("# a machine without typing-extensions\nnumpy\nopencv_python_headless\n")
    # albucore: typing-extensions; python_version < "3.10"
    assert set(gb.bundle_plan(tmp_path, machine, "3.12")) == {"albucore", "simsimd", "stringzilla"}
    old = gb.bundle_plan(tmp_path, machine, "3.9")
    assert old["typing-extensions"]["why"] == "required by albucore"


def test_plan_names_a_module_not_installed_here(tmp_path: Path) -> None:
    _write(tmp_path, {"pipeline/bench_gpu.py": "def f():\n    import surely_not_a_module_x\n"})
    with pytest.raises(ValueError, match=r"surely_not_a_module_x.*pipeline\.bench_gpu:2.*make install"):
        gb.bundle_plan(tmp_path, gb.MACHINE_FILE, "3.12")


# --- the download and MANIFEST.txt (pip faked) ------------------------------------------------------------------

def _fake_pip(made: list[str], rc: int = 0, err: str = ""):
    def run(cmd, **kw):
        assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd and "--only-binary=:all:" in cmd
        dest = Path(cmd[cmd.index("-d") + 1])
        for name in made:
            (dest / name).write_bytes(b"x" * 1000)
        return subprocess.CompletedProcess(cmd, rc, "", err)
    return run


def test_write_bundle_removes_stale_wheels_and_lists_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plan = {"foo-bar": {"name": "foo-bar", "version": "1.2", "why": "imports foo (pipeline.bench_gpu:3)"},
            "baz": {"name": "baz", "version": "0.1", "why": "required by foo-bar"}}
    (tmp_path / "foo_bar-1.1-py3-none-any.whl").write_bytes(b"old")              # a stale second version
    (tmp_path / "other-9-py3-none-any.whl").write_bytes(b"old")
    monkeypatch.setattr(gb.subprocess, "run", _fake_pip(["foo_bar-1.2-py3-none-any.whl",
                                                         "baz-0.1-cp311-cp311-manylinux_2_17_x86_64.whl"]))
    text = gb.write_bundle(tmp_path, plan, "3.11")
    assert sorted(p.name for p in tmp_path.glob("*.whl")) == ["baz-0.1-cp311-cp311-manylinux_2_17_x86_64.whl",
                                                              "foo_bar-1.2-py3-none-any.whl"]
    assert (tmp_path / "MANIFEST.txt").read_text() == text
    assert "CPython 3.11" in text and re.search(r"\d{4}-\d\d-\d\d", text) and "# 2 wheels, 0.0 MB" in text
    row = next(line for line in text.splitlines() if line.startswith("foo-bar"))
    assert "1.2" in row and "foo_bar-1.2-py3-none-any.whl" in row and "MB" in row and "pipeline.bench_gpu:3" in row


def test_write_bundle_says_which_wheel_is_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plan = {"foo": {"name": "foo", "version": "1.0", "why": "imports foo (x:1)"}}
    err = "ERROR: Could not find a version that satisfies ...\nERROR: No matching distribution found for foo==1.0\n"
    monkeypatch.setattr(gb.subprocess, "run", _fake_pip([], rc=1, err=err))
    with pytest.raises(ValueError) as exc:
        gb.write_bundle(tmp_path, plan, "3.12")
    msg = str(exc.value)
    assert "\n" not in msg and "foo==1.0" in msg and "3.12" in msg and "manylinux_2_N_x86_64" in msg


# --- the preflight ----------------------------------------------------------------------------------------------

def _preflight(py: str | Path, *flags: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(py), *flags, "-m", "pipeline.gpu_bundle", "preflight"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def test_preflight_silent_when_nothing_is_missing() -> None:
    proc = _preflight(sys.executable)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")


def test_preflight_one_line_where_modules_are_missing() -> None:
    # -S: this interpreter without its site-packages (no torch, pydantic, ...): only the standard library
    proc = _preflight(sys.executable, "-S")
    assert proc.returncode == 2 and proc.stdout == "" and "Traceback" not in proc.stderr, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("gpu-check: ") and "make gpu-bundle" in line and ".whl/" in line
    named = set(re.search(r"lacks ([\w, ]+):", line)[1].split(", "))
    assert named == set(gb.chain_modules(REPO)) and MISSING | {"torch"} <= named
