"""The ``keyhand`` command line: one entry per DVC stage and the tools around them.

    keyhand --help
    keyhand make-hand-model --out models/      # license-free proxy MANO_RIGHT.pkl / MANO_LEFT.pkl
    keyhand render-hand --out docs/proxy_hand.png
    keyhand make-synthetic synth-stb --out data/synth/synth-stb --split train=600 --split test=200
    keyhand contact-sheet data/synth/synth-stb --out docs/synth_stb.png
    keyhand prepare synth-stb --root data/synth/synth-stb --split train --out data/prepared/synth-stb/train
    keyhand masks data/prepared/synth-stb/train --out data/masks/synth-stb/train --workers 2
    keyhand bench mano|render|data             # benchmark figures (not timed tests)
"""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path

import typer

app = typer.Typer(
    help="keyhand: reproduce and extend a keypoint-based 3D hand pose/shape estimation paper.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _fail(message: str) -> None:
    """One clear line on stderr, exit status 2."""
    typer.echo(f"keyhand: {message}", err=True)
    raise typer.Exit(2)


class Side(StrEnum):
    right = "right"
    left = "left"
    both = "both"


@app.command("make-hand-model")
def make_hand_model(
    out: Path = typer.Option(Path("models/proxy"), help="Folder for MANO_RIGHT.pkl / MANO_LEFT.pkl."),
    seed: int = typer.Option(0, help="Generator seed (same seed, same file)."),
    side: Side = typer.Option(Side.both, help="Which hand(s) to write."),
) -> None:
    """Write keyhand's license-free proxy hand in MANO's pickle format."""
    from keyhand.geometry.mano import load_mano_model
    from keyhand.geometry.proxy_hand import write_proxy_hand

    sides = ["right", "left"] if side is Side.both else [side.value]
    for s in sides:
        path = write_proxy_hand(out / f"MANO_{s.upper()}.pkl", seed=seed, side=s)
        model = load_mano_model(path)
        typer.echo(f"wrote {path}: {model.v_template.shape[0]} vertices, {model.faces.shape[0]} faces, "
                   f"{model.shapedirs.shape[-1]} shape directions, {path.stat().st_size / 1e6:.2f} MB")


@app.command("render-hand")
def render_hand(
    out: Path = typer.Option(Path("docs/proxy_hand.png"), help="PNG to write."),
    model: Path = typer.Option(None, help="A MANO file (default: the proxy hand)."),
    seed: int = typer.Option(0, help="Proxy seed when no model is given."),
) -> None:
    """Render the hand model: three views, flat and in a fist."""
    from keyhand.geometry.mano import ManoFileError, load_mano_pickle, resolve_model_path
    from keyhand.geometry.proxy_hand import render_views

    try:
        data = load_mano_pickle(resolve_model_path(model, "right", seed))
    except ManoFileError as exc:
        _fail(str(exc))
    out.parent.mkdir(parents=True, exist_ok=True)
    render_views(data, out)
    typer.echo(f"wrote {out}")


def _sizes(items: list[str]) -> dict[str, int]:
    sizes = {}
    for item in items:
        name, _, n = item.partition("=")
        if not name or not n.isdigit():
            _fail(f"--split expects NAME=COUNT (e.g. train=600), got {item!r}")
        sizes[name] = int(n)
    return sizes


@app.command("make-synthetic")
def make_synthetic(
    kind: str = typer.Argument(..., help="synth-obman, synth-stb or synth-gestures."),
    out: Path = typer.Option(..., help="Dataset folder to write."),
    split: list[str] = typer.Option(["train=64", "test=16"], help="NAME=COUNT, repeatable."),
    seed: int = typer.Option(0, help="Same seed, same files."),
    height: int = typer.Option(240, help="Image height (px)."),
    width: int = typer.Option(320, help="Image width (px)."),
    subjects: int = typer.Option(4, help="Subjects of the gesture set (shape + skin tone)."),
    model: Path = typer.Option(None, help="A MANO file or folder (default: the proxy hand)."),
) -> None:
    """Render a synthetic dataset (keyhand.data.synthetic): images, exact 2D/3D joints, masks, camera."""
    from keyhand.data.synthetic import KINDS, generate
    from keyhand.geometry.mano import ManoFileError

    if kind not in KINDS:
        _fail(f"unknown synthetic dataset {kind!r}; choose one of {', '.join(KINDS)}")
    sizes = _sizes(split)
    try:
        root = generate(kind, out, sizes, seed=seed, image_size=(height, width),
                        model_path=None if model is None else str(model), num_subjects=subjects)
    except ManoFileError as exc:
        _fail(str(exc))
    typer.echo(f"wrote {root}: " + ", ".join(f"{k} {v}" for k, v in sizes.items()))


@app.command("contact-sheet")
def contact_sheet_cmd(
    root: Path = typer.Argument(..., help="A synthetic dataset folder."),
    out: Path = typer.Option(..., help="PNG to write."),
    split: str = typer.Option("train", help="Split to show."),
    n: int = typer.Option(16, help="Number of samples."),
) -> None:
    """A PNG grid of samples with their 2D joints and skeleton drawn."""
    from keyhand.data.record import DatasetError
    from keyhand.data.synthetic import contact_sheet

    try:
        typer.echo(f"wrote {contact_sheet(root, split, out, n=n)}")
    except DatasetError as exc:
        _fail(str(exc))


@app.command("prepare")
def prepare_cmd(
    dataset: str = typer.Argument(..., help="synth-obman, synth-stb, synth-gestures, obman, stb, rwth, senz3d."),
    root: Path = typer.Option(..., help="The dataset's folder."),
    split: str = typer.Option("train", help="Split to prepare."),
    out: Path = typer.Option(..., help="Prepared split folder to write."),
    size: int = typer.Option(256, help="Crop side (px), §3.1."),
    enlarge: float = typer.Option(0.2, help="Crop enlargement, §3.1 (20 %)."),
    on_corrupt: str = typer.Option("fail", help="Corrupt images: fail, or skip with a counted warning."),
) -> None:
    """§3.1 crops of a dataset split into the prepared cache (keyhand.data.prepare)."""
    from keyhand.data.prepare import open_reader, prepare_split
    from keyhand.data.record import DatasetError

    try:
        reader = open_reader(dataset, root, split, on_corrupt=on_corrupt)
        manifest, stats = prepare_split(reader, out, image_size=size, enlarge=enlarge,
                                        params={"dataset": dataset, "split": split, "root": str(root)})
    except (DatasetError, ValueError) as exc:
        _fail(str(exc))
    typer.echo(f"wrote {out}: {manifest['count']} samples ({stats.by_joints} by joints, {stats.by_hand_box} by "
               f"hand box, {stats.whole_image} whole image, {len(stats.skipped_files)} corrupt skipped)")


@app.command("masks")
def masks_cmd(
    split_dir: Path = typer.Argument(..., help="A prepared split (keyhand prepare)."),
    out: Path = typer.Option(..., help="Folder for the GrabCut masks."),
    workers: int = typer.Option(0, help="Processes (0 = all cores)."),
    iterations: int = typer.Option(5, help="GrabCut iterations."),
) -> None:
    """§3.5 GrabCut masks of every prepared crop, in parallel and resumable."""
    from keyhand.data.prepare import compute_split_masks
    from keyhand.data.record import DatasetError

    try:
        report = compute_split_masks(split_dir, out, workers=workers or None, iterations=iterations)
    except DatasetError as exc:
        _fail(str(exc))
    typer.echo(f"wrote {out}: {report.done} GrabCut, {report.fallback} fallback, {report.skipped} already done, "
               f"{len(report.failed)} failed, {report.seconds:.1f} s")
    for key, err in report.failed[:5]:
        typer.echo(f"  failed {key}: {err}", err=True)


class Bench(StrEnum):
    mano = "mano"
    render = "render"
    data = "data"


@app.command("bench")
def bench(
    what: Bench = typer.Argument(..., help="Which component to benchmark."),
    device: list[str] = typer.Option(None, help="Devices (default: cpu, and cuda when present)."),
) -> None:
    """Print benchmark figures (Markdown) for a component."""
    if what is Bench.mano:
        from pipeline import bench_mano as mod

        rows = mod.run(devices=device or None)
    elif what is Bench.render:
        from pipeline import bench_render as mod

        rows = [r for d in (device or [None]) for r in mod.run(device=d)]
    else:
        from pipeline import bench_data as mod

        rows = mod.run()
    typer.echo(mod.format_table(rows))


def main() -> None:  # pragma: no cover - console entry
    app(prog_name="keyhand")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
