"""The ``synthetic`` stage: the generated datasets (synth-obman, synth-stb, synth-gestures) of the synthetic source."""

from __future__ import annotations

from pipeline.params import Params
from pipeline.stages.common import DATA


def stage_synthetic(p: Params) -> None:
    """Generate the synthetic datasets (synthetic source); with real data, write a note and nothing else."""
    from keyhand.data.synthetic import generate

    root = DATA / "synth"
    root.mkdir(parents=True, exist_ok=True)
    if p.data.source != "synthetic":
        (root / "SOURCE.txt").write_text("data.source is 'real': no synthetic data generated\n")
        return
    s = p.data.synthetic
    sizes = {"synth-obman": s.obman, "synth-stb": s.stb, "synth-gestures": s.gestures}
    for name, split_sizes in sizes.items():
        print(f"synthetic: {name} {split_sizes}")
        generate(name, root / name, dict(split_sizes), seed=s.seed, image_size=(s.height, s.width),
                 model_path=p.model.mano_path, num_subjects=s.subjects)
    (root / "SOURCE.txt").write_text("data.source is 'synthetic'\n")
