"""The ``keyhand`` command line: one entry per DVC stage and the tools around them.

    keyhand --help
    keyhand make-hand-model --out models/      # license-free proxy MANO_RIGHT.pkl / MANO_LEFT.pkl
    keyhand render-hand --out docs/proxy_hand.png
    keyhand bench mano                         # benchmark figures (not timed tests)
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


class Bench(StrEnum):
    mano = "mano"
    render = "render"


@app.command("bench")
def bench(
    what: Bench = typer.Argument(..., help="Which component to benchmark."),
    device: list[str] = typer.Option(None, help="Devices (default: cpu, and cuda when present)."),
) -> None:
    """Print benchmark figures (Markdown) for a component."""
    if what is Bench.mano:
        from pipeline import bench_mano as mod

        rows = mod.run(devices=device or None)
    else:
        from pipeline import bench_render as mod

        rows = [r for d in (device or [None]) for r in mod.run(device=d)]
    typer.echo(mod.format_table(rows))


def main() -> None:  # pragma: no cover - console entry
    app(prog_name="keyhand")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
