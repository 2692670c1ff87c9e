"""The prepared GPU check (pipeline/bench_gpu.py, issues 13 and 20) run on CPU with its small sizes, as `make test`
does, on a bare machine: a fresh venv holding only the GPU machine's packages (cluster/gpu-machine-packages.txt;
the CPU torch of this machine stands in for its CUDA build), the bundle of `make gpu-bundle` for this machine's
Python, and `make gpu-check`, exactly as on the GPU machine. That one run is shared by the tests below; its wall
times are printed. The docs are only read: updates go to temporary copies.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata as md
import json
import math
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest
import torch

from pipeline import bench_gpu as bg
from pipeline import gpu_agree as ga
from pipeline import gpu_bundle as gb

REPO = Path(__file__).resolve().parents[1]
PLAN = bg.make_plan(torch.device("cpu"))
#: Why a figure may be missing on CPU: nothing else (no "failed", "skipped", "not measured").
CPU_NA = ("n/a (CPU run: no CUDA device", "n/a (unknown peak)", "n/a (not planned on CPU", "n/a (search cap")
PYVER = f"{sys.version_info.major}.{sys.version_info.minor}"


def _owners() -> dict[str, set[str]]:
    """Top-level entries of this venv's site-packages -> the (normalised) distributions whose RECORD holds them."""
    out: dict[str, set[str]] = {}
    for dist in md.distributions():
        name = gb.norm(dist.metadata["Name"])   # (metadata is read again at each access)
        for f in dist.files or []:
            parts = Path(str(f)).parts
            if parts and parts[0] != "..":
                out.setdefault(parts[0], set()).add(name)
    return out


def machine_site(site: Path, have: set[str]) -> list[str]:
    """``site``: links to the files of this venv's distributions whose names the GPU machine has, and to nothing
    else. A top-level entry that only such distributions hold is linked whole; one shared with others (a namespace
    package) is made a folder and only the machine distributions' files in it are linked. Returns the names."""
    here = Path(sysconfig.get_paths()["purelib"])
    owners = _owners()
    linked: list[str] = []
    for dist in md.distributions():
        name = gb.norm(dist.metadata["Name"])
        if name not in have:
            continue
        linked.append(name)
        for f in dist.files or []:
            parts = Path(str(f)).parts
            if not parts or parts[0] in ("..", "__pycache__") or parts[0].endswith(".pth"):
                continue   # outside site-packages, compiled top-level modules, start-up hooks
            rel = Path(parts[0]) if owners[parts[0]] <= have else Path(*parts)
            link, target = site / rel, here / rel
            if not link.exists() and not link.is_symlink() and (target.exists() or target.is_symlink()):
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(target)
    return sorted(linked)


def bare_venv(root: Path, have: set[str]) -> tuple[Path, list[str]]:
    """A fresh venv (with pip) whose site-packages reach only ``machine_site``, through a .pth file."""
    base = shutil.which("python3.11") or sys.executable
    subprocess.run([base, "-m", "venv", str(root)], check=True, capture_output=True, timeout=300)
    py = root / "bin" / "python"
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    site = root / "gpu-machine-site"
    site.mkdir()
    linked = machine_site(site, have)
    (Path(purelib) / "gpu-machine.pth").write_text(f"{site}\n")
    return py, linked


def bare_env() -> dict[str, str]:
    """This environment without the project's venv: not active, not on PATH, no PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    venv_bin = str(REPO / ".venv" / "bin")
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p.rstrip("/") != venv_bin)
    return env



@pytest.fixture(scope="module")
def bare(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The bundle for this Python, the bare venv (only the GPU machine's packages, not the project's venv on PATH),
    and the preflight and the check there before the bundle is installed."""
    root = tmp_path_factory.mktemp("bare-machine")
    t0 = time.perf_counter()
    wheels = root / "whl"
    proc = subprocess.run(["make", "-s", "gpu-bundle", f"PYVER={PYVER}", f"BUNDLE_DEST={wheels}"], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    t1 = time.perf_counter()
    py, linked = bare_venv(root / "venv", gb.machine_packages())
    t2 = time.perf_counter()
    probe = subprocess.run([str(py), "-c", "import importlib.util as u; print([m for m in ('pydantic', "
                            "'albumentations', 'smplx', 'mlflow', 'ray', 'keyhand', 'torch') if u.find_spec(m)])"],
                           cwd=root, env=bare_env(), capture_output=True, text=True, check=True)
    env = {**bare_env(), "PYTHONPATH": str(REPO)}
    pre = subprocess.run([str(py), "-m", "pipeline.gpu_bundle", "preflight"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=120)
    direct = subprocess.run([str(py), "-m", "pipeline.bench_gpu", "--device", "cpu", "--out", str(root / "x")],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    print(f"\nmake gpu-bundle PYVER={PYVER}: {t1 - t0:.1f} s; bare venv: {t2 - t1:.1f} s")
    return {"root": root, "wheels": wheels, "py": py, "env": env, "preflight": pre, "direct": direct,
            "linked": linked, "probe": probe.stdout.strip(),
            "manifest": (wheels / "MANIFEST.txt").read_text()}


@pytest.fixture(scope="module")
def cpu_run(bare: dict) -> dict:
    out = bare["root"] / "gpu-check"
    t0 = time.perf_counter()
    proc = subprocess.run(["make", "-s", "gpu-check", f"GPU_PY={bare['py']}", f"GPU_SITE={bare['root'] / 'site'}",
                           f"BUNDLE_DEST={bare['wheels']}", f"GPU_CHECK_OUT={out}", "GPU_CHECK_ARGS=--device cpu"],
                          cwd=REPO, env=bare["env"], capture_output=True, text=True, timeout=900)
    wall = time.perf_counter() - t0
    print(f"\nmake gpu-check on the bare venv (CPU plan): {wall:.1f} s wall")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads((out / bg.JSON_NAME).read_text())
    return {"proc": proc, "out": out, "wall": wall, "res": res, "md": (out / bg.MD_NAME).read_text(),
            "figs": {f["key"]: f for f in res["figures"]}}


@pytest.mark.slow
def test_bare_machine_lacks_the_bundle_and_says_so_in_one_line(bare: dict) -> None:
    linked = set(bare["linked"])
    assert {"torch", "numpy", "pytest", "pip"} <= linked and not linked - gb.machine_packages()
    assert bare["probe"] == "['torch']"       # only the machine's set: no pydantic, mlflow, ray, nor keyhand itself
    for proc in (bare["preflight"], bare["direct"]):
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and "make gpu-bundle" in proc.stderr
    assert "lacks albumentations, pydantic, smplx" in bare["preflight"].stderr
    names = {line.split()[0] for line in bare["manifest"].splitlines() if not line.startswith("#")}
    assert {"pydantic", "pydantic_core", "annotated-types", "typing-inspection", "albumentations", "albucore",
            "simsimd", "stringzilla", "smplx"} <= names
    assert not {gb.norm(n) for n in names} & gb.machine_packages()       # nothing the machine already has
    assert sorted(p.name for p in bare["wheels"].glob("*.whl")) and len(list(bare["wheels"].glob("*.whl"))) == len(
        names)                                                            # one version each


def test_chain_is_read_from_the_sources() -> None:
    chain = gb.chain_modules()
    assert {"torch", "numpy", "pydantic", "albumentations", "smplx", "pytest", "yaml"} <= set(chain)
    assert not set(chain) & (set(sys.stdlib_module_names) | set(gb.PROJECT))
    assert all(re.fullmatch(r"[\w.]+:\d+", w) for ws in chain.values() for w in ws)
    assert "test_mano:26" in chain["smplx"]                                # pytest.importorskip("smplx")
    assert {p.name for p in gb.cuda_test_files(REPO / "tests")} == {"test_cuda.py", "test_mano.py"}
    plan = gb.bundle_plan(python_version="3.12")
    assert {"pydantic", "pydantic-core", "albumentations", "albucore", "smplx"} <= set(plan)
    assert "torch" not in plan and "numpy" not in plan and "typing-extensions" not in plan   # on the machine


def test_gradient_floor_on_cpu() -> None:
    """The gradients section's comparisons on CPU against float64 (tests/test_cuda.py runs them against CUDA):
    fp32's own rounding of the HE's gradients is far below the bounds a device is held to."""
    for mode, bound in (("nmr", 1e-3), ("soft", 1e-5)):
        figs = ga.he_agreement(mode, torch.device("cpu"))
        assert figs["coverage"]["value"] > 0.05
        for g in ga.VIEW_GROUPS:
            assert 0 < figs[g]["value"] == figs[g]["floor"] < bound, (mode, g, figs[g])
            assert ga.agrees("grad", figs[g])
        assert figs["silhouette_px"]["value"] == 0 and figs["joints_2d_px"]["value"] < 1e-3
    # a device 100 times further from the CPU than fp32's own error fails; within 10 times passes
    assert not ga.agrees("grad", {"value": 100 * 3e-4, "floor": 3e-4}) and ga.agrees("grad", {"value": 2e-3,
                                                                                              "floor": 3e-4})
    assert not ga.agrees("silhouette_px", {"value": 50, "floor": 0, "pixels": 16384})


def test_allocation_failures_count_as_out_of_memory() -> None:
    assert bg._is_oom(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert bg._is_oom(RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"))
    assert bg._is_oom(RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"))
    assert not bg._is_oom(RuntimeError("CUDA error: an illegal memory access was encountered"))


def test_plan_fits_six_minutes() -> None:
    assert sum(b for _, b in bg.SECTIONS) <= 330 and bg.DEADLINE_S <= 360
    gpu = bg.make_plan(torch.device("cuda"))   # builds configs only: no CUDA call
    assert gpu.compile_jobs == (("paper", 256), ("default", 256)) and gpu.deadline_s == bg.DEADLINE_S
    assert set(gpu.budgets) == {s for s, _ in bg.SECTIONS}


@pytest.mark.slow
def test_cpu_run_reports_every_figure(cpu_run: dict) -> None:
    res, figs = cpu_run["res"], cpu_run["figs"]
    expected = bg.declare(PLAN)
    assert list(figs) == list(expected)                      # every figure, in the declared order
    assert res["device"]["type"] == "cpu" and res["small"] and res["passed"]
    assert {s: v["status"] for s, v in res["sections"].items()} == {s: "ok" for s, _ in bg.SECTIONS}
    missing = {k: f["note"] for k, f in figs.items() if f["value"] is None}
    assert all(n.startswith(CPU_NA) for n in missing.values()), missing
    # what cannot exist on CPU says why; everything else carries a CPU value
    assert all(k.startswith("agree.") and ".fp32." in k for k, n in missing.items() if "no CUDA" in n)
    assert all(k.endswith(".mfu") for k, n in missing.items() if "unknown peak" in n)
    assert {k for k, n in missing.items() if "search cap" in n} == {f"{m}.train.max.first_oom" for m in PLAN.models}
    assert PLAN.compile_jobs == (("paper", 2),)
    assert {k for k, n in missing.items() if "not planned" in n} == {
        f"{m}.infer.compiled.b{b}.{x}" for m in PLAN.models for b in PLAN.infer_batches if (m, b) != ("paper", 2)
        for x in ("img_s", "peak_mib", "mfu", "compile_s")}
    for k, f in figs.items():
        if f["value"] is not None and f["unit"] in ("img/s", "ms", "GFLOP", "M", "s"):
            assert isinstance(f["value"], float) and math.isfinite(f["value"]) and f["value"] > 0, (k, f)
        assert f["ok"] is not False, (k, f)


@pytest.mark.slow
def test_cpu_run_checks_and_sizes(cpu_run: dict) -> None:
    figs = cpu_run["figs"]
    v = {k: f["value"] for k, f in figs.items()}
    for m in ("paper", "default"):
        assert v[f"dtypes.{m}.cpu.ve_output"] == "bfloat16"                 # autocast reached the VE ...
        for k in ("mano_output", "joints_2d", "silhouette"):
            assert v[f"dtypes.{m}.cpu.{k}"] == "float32"                    # ... and not the HE
        assert v[f"dtypes.{m}.cpu.he_low_precision_ops"] == 0
        assert v[f"agree.{m}.bf16.joints_mm"] <= bg.TOL_MM["bf16"]
        assert v[f"agree.{m}.channels_last.joints_mm"] <= bg.TOL_MM["channels_last"]
        for mode in ("bf16", "channels_last"):
            for k in ("heatmaps_rel", "ve_latent_rel"):
                assert 0 <= v[f"agree.{m}.{mode}.{k}"] <= bg.TOL_REL[mode] and figs[f"agree.{m}.{mode}.{k}"]["ok"]
        assert v[f"agree.{m}.bf16.heatmaps_rel"] > 1e3 * v[f"agree.{m}.channels_last.heatmaps_rel"]  # bf16 did run
        assert v[f"agree.{m}.sensitivity_mm"] > 0
        cap = PLAN.max_batch_cap
        assert v[f"{m}.train.max.batch"] == cap and f"search cap {cap}" in figs[f"{m}.train.max.batch"]["note"]
        assert v[f"{m}.gflops_train"] > v[f"{m}.gflops_inference"] > 0
    assert v["paper.infer.compiled.b2.compile_s"] > 0                     # torch.compile traced on CPU
    assert v["cuda_tests.selected"] >= 6 and v["cuda_tests.skipped"] == v["cuda_tests.selected"]
    assert v["cuda_tests.failed"] == 0 and "test_he_gradients_match_cpu" in figs["cuda_tests.skipped"]["note"]
    for mode in ("nmr", "soft"):                                          # the gradients section: the fp32 floor
        assert 0 < v[f"grad.he.{mode}.theta"] < 1e-3 and figs[f"grad.he.{mode}.theta"]["ok"]
    assert v["grad.paper.sfe"] > 0 and v["loader.main_img_s"] > 0 and v["loader.profile_img_s"] > 0
    assert v["train_steps.steps"] == PLAN.steps == 6 and v["train_steps.finite"] is True
    curve = cpu_run["res"]["loss_curve"]
    assert len(curve) == PLAN.steps and all(math.isfinite(x) for x in curve)
    assert figs["train_steps.curve"]["value"] == " → ".join(f"{x:.3g}" for x in curve)   # 6 steps: one per bin
    out = cpu_run["proc"].stdout
    assert "gpu-check:" in out and "all checks passed" in out and "renderer fwd+bwd" in out


@pytest.mark.slow
def test_markdown_has_every_figure(cpu_run: dict) -> None:
    md = cpu_run["md"]
    assert md.startswith("# GPU check: cpu")
    rows = {line.split(" | ")[1]: line for line in md.splitlines() if line.startswith("| ") and " | " in line}
    for f in cpu_run["res"]["figures"]:
        label = bg._md(f["label"])
        assert label in rows, label
        assert f"| {bg._md(bg.fmt(f))} |" in rows[label], (label, rows[label])
    assert "pytest -m cuda: test_cuda.py, test_mano.py" in rows["CUDA-only tests selected"]


@pytest.mark.slow
def test_readme_update_on_a_copy(cpu_run: dict, tmp_path: Path) -> None:
    real = (REPO / "docs" / "gpu.md").read_text()
    assert bg.README_BEGIN in real and bg.README_END in real and "### GPU figures" in real
    readme = tmp_path / "README.md"
    readme.write_text(real)
    js = cpu_run["out"] / bg.JSON_NAME
    # a CPU run never fills the GPU table: the library refuses, the command says so and exits 0
    with pytest.raises(ValueError, match="CPU run"):
        bg.update_readme(readme, cpu_run["res"])
    proc = subprocess.run([sys.executable, "-m", "pipeline.bench_gpu", "--from-json", str(js), "--update-readme",
                           "--readme", str(readme)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "not updated" in proc.stdout and readme.read_text() == real
    # allowed explicitly, the block is replaced (and only it), idempotently
    bg.update_readme(readme, cpu_run["res"], allow_cpu=True)
    once = readme.read_text()
    bg.update_readme(readme, cpu_run["res"], allow_cpu=True)
    assert readme.read_text() == once
    head, tail = real.split(bg.README_BEGIN)[0], real.split(bg.README_END)[1]
    assert once.startswith(head) and once.endswith(tail)
    block = once.split(bg.README_BEGIN)[1].split(bg.README_END)[0]
    figs = cpu_run["figs"]
    assert "cpu (" in block and cpu_run["res"]["date"][:10] in block and "CPU run (small sizes)" in block
    nmr = " / ".join(bg.fmt(figs[f"renderer.nmr.{k}"]).removesuffix(" ms") for k in ("fwd_ms", "fwd_bwd_ms"))
    assert f"| {nmr} ms |" in block and f"| {bg.fmt(figs['paper.train.max.batch'])} |" in block
    row = next(line for line in block.splitlines() if line.startswith("| inference img/s, batch 1 / 2, fp32"))
    assert bg.NOT_YET not in row and row.count(" / ") >= 3
    # a CUDA result through the command: the table is filled
    gpu = json.loads(js.read_text())
    gpu["device"].update(type="cuda", name="NVIDIA H100 80GB HBM3", cuda="12.8", memory_gib=79.2)
    gpu_js = tmp_path / "gpu.json"
    gpu_js.write_text(json.dumps(gpu))
    readme.write_text(real)
    assert bg.main(["--from-json", str(gpu_js), "--update-readme", "--readme", str(readme)]) == 0
    assert "**NVIDIA H100 80GB HBM3 (torch" in readme.read_text()


def test_readme_template_and_bad_inputs(tmp_path: Path, capsys) -> None:
    block = bg.readme_block(None)
    real = (REPO / "docs" / "gpu.md").read_text().split(bg.README_BEGIN)[1].split(bg.README_END)[0]
    labels = lambda text: [ln.split(" | ")[0] for ln in text.splitlines() if ln.startswith("| ")]  # noqa: E731
    assert labels(real) == labels(block)                     # the README's table is the one the code fills
    assert block.count(bg.NOT_YET) >= 20 and "batch 1 / 8 / 64 / 256" in block and "paper profile: 256²" in block
    no_markers = tmp_path / "R.md"
    no_markers.write_text("# x\n")
    with pytest.raises(ValueError, match="no '<!-- gpu-figures:begin -->'"):
        bg.update_readme(no_markers, {"device": {"type": "cuda"}})
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    assert bg.main(["--from-json", str(bad)]) == 2
    assert bg.main(["--only", "bogus", "--device", "cpu", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "bad.json: not a readable gpu_check.json" in err and "unknown section(s) bogus" in err


def test_peak_table_by_device_name() -> None:
    assert bg.peak_tflops("NVIDIA H100 80GB HBM3")["bf16"] == 989.4
    assert bg.peak_tflops("NVIDIA H100 PCIe")["bf16"] == 756.5
    assert bg.peak_tflops("NVIDIA H100 NVL")["tf32"] == 417.5
    assert bg.peak_tflops("NVIDIA H200")["bf16"] == 989.4
    assert bg.peak_tflops("NVIDIA A100-SXM4-40GB")["bf16"] == bg.peak_tflops("NVIDIA A100 80GB PCIe")["bf16"] == 312
    assert bg.peak_tflops("NVIDIA L4")["bf16"] == 121.0 and bg.peak_tflops("NVIDIA A10")["bf16"] == 125.0
    assert bg.peak_tflops("NVIDIA GeForce RTX 4090")["fp32"] == 82.6
    assert bg.peak_tflops("Tesla V100-SXM2-16GB") == {"fp32": 15.7, "tf32": None, "bf16": None}
    assert bg.peak_tflops("Tesla T4")["fp32"] == 8.1
    assert bg.peak_tflops("NVIDIA A10G") is None and bg.peak_tflops("NVIDIA B200") is None


def test_budgets_skip_with_a_reason(tmp_path: Path) -> None:
    """A spent budget leaves every cell of the section saying so (the GPU run's 6-minute bound)."""
    plan = dataclasses.replace(bg.make_plan(torch.device("cpu")), budgets={"inference": 0, "compile": 0})
    check = bg.GpuCheck(plan, tmp_path, only={"inference", "compile"}, log=lambda s: None)
    assert check.run() == 0
    figs = {f["key"]: f for f in json.loads((tmp_path / bg.JSON_NAME).read_text())["figures"]}
    assert figs["paper.infer.fp32.b1.img_s"]["note"] == "n/a (skipped: inference budget 0 s spent)"
    assert re.match(r"n/a \(skipped: compile budget 0 s spent", figs["paper.infer.compiled.b2.img_s"]["note"])
    assert figs["renderer.nmr.fwd_ms"]["note"] == "not measured: section renderer not run (--only)"
    assert figs["data.samples"]["value"] == plan.synth_n                # the data every other section reads


def _search_check(tmp_path: Path, monkeypatch, rate) -> bg.GpuCheck:
    """A check whose training step is replaced by ``rate(batch)``: the out-of-memory search without a GPU."""
    plan = dataclasses.replace(PLAN, models={"paper": PLAN.models["paper"]}, max_batch_cap=4096, small=False)
    check = bg.GpuCheck(plan, tmp_path, log=lambda s: None)
    check.info["peak_tflops"] = bg.peak_tflops("NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(check, "_model", lambda m, head_scale=1.0: torch.nn.Linear(1, 1))
    monkeypatch.setattr(check, "_flops", lambda m, model: check.flops.setdefault(m, {"inference": 1e9, "train": 3e9}))
    monkeypatch.setattr(check, "_train_rate", lambda m, base, b: rate(b))
    check._section, check._t_section = "training", time.perf_counter()
    check.s_training()
    return check


def test_batch_search_doubles_then_bisects(tmp_path: Path, monkeypatch) -> None:
    tried: list[int] = []

    def rate(b: int) -> dict[str, float]:
        tried.append(b)
        if b > 100:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return {"img_s": 10.0 * b, "step_ms": 100.0, "peak_mib": float(b)}

    figs = _search_check(tmp_path, monkeypatch, rate).figs
    assert tried == [6, 12, 24, 48, 96, 192, 144, 120]            # doubling, then two bisection steps
    assert figs["paper.train.max.batch"].value == 96 and figs["paper.train.max.first_oom"].value == 120
    assert figs["paper.train.max.img_s"].value == 960 and figs["paper.train.b6.img_s"].value == 60
    assert figs["paper.train.max.mfu"].value == pytest.approx(3e9 * 960 / 67e12)   # fp32 peak of an H100 SXM
    assert figs["paper.train.max.batch"].note == "doubling from 6, then 2 bisection steps"


def test_batch_search_reports_a_failure_that_is_not_out_of_memory(tmp_path: Path, monkeypatch) -> None:
    def rate(b: int) -> dict[str, float]:
        if b == 24:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return {"img_s": 10.0 * b, "step_ms": 100.0, "peak_mib": float(b)}

    f = _search_check(tmp_path, monkeypatch, rate).figs["paper.train.max.batch"]
    assert f.value == 12 and f.ok is False and f.note.startswith("batch 24 failed (not out of memory): RuntimeError")
