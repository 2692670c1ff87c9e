"""Data stages: ``prepare`` (§3.1 crops) and ``masks`` (§3.5 GrabCut) of each data role."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pipeline.params import Params
from pipeline.stages.common import masks_dir, prepared_dir, role_datasets


class held_out(Sequence):  # noqa: N801 - reads as a function at the call site
    """A real pose set's ``train`` reader split deterministically into train and val; ``part``: "train" | "val".

    ``val_sequence`` (STB: ``data.stb.val_sequence``): val = every frame of that one recorded sequence, train = the
    other sequences (``reader.sequences`` gives each sample's), so no val frame has its neighbouring, near-identical
    frames in train. Otherwise ``fraction`` (``data.val_fraction``, a set without sequences): sample ``i`` is val when
    ``i % round(1 / fraction) == 0`` (every k-th sample). No randomness: the same data gives the same split.
    Delegates ``hand_box``, ``vertices`` (index-mapped) and ``skipped`` to the reader."""

    def __init__(self, reader: Any, part: str, fraction: float | None = None, val_sequence: str | None = None) -> None:
        if (fraction is None) == (val_sequence is None):
            raise ValueError("held_out: give either fraction or val_sequence")
        self.reader, self.part = reader, part
        if val_sequence is not None:
            sequences = list(reader.sequences)
            if val_sequence not in sequences:
                raise ValueError(f"held-out val sequence {val_sequence!r} has no sample in {reader!r} "
                                 f"(its sequences: {', '.join(sorted(set(sequences)))})")
            self.indices = [i for i, seq in enumerate(sequences) if (seq == val_sequence) == (part == "val")]
        else:
            k = max(2, round(1.0 / fraction))
            self.indices = [i for i in range(len(reader)) if (i % k == 0) == (part == "val")]
        self.skipped = getattr(reader, "skipped", [])
        if hasattr(reader, "hand_box"):
            self.hand_box = reader.hand_box
        if callable(getattr(reader, "vertices", None)):
            self.vertices = lambda i: reader.vertices(self.indices[i])

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Any:  # type: ignore[override]
        return self.reader[self.indices[i]]


def stage_prepare(p: Params, role: str) -> None:
    """§3.1 crops of every split of the role's datasets into the prepared cache."""
    from keyhand.data.prepare import open_reader, prepare_split

    for name, splits in role_datasets(p, role).items():
        root = p.dataset_root(name)
        options = p.reader_options(name)  # data.obman.mode, data.stb.palm_to_wrist, data.rwth.signers ...
        synthetic = name.startswith("synth-")
        for split in splits:
            held = not synthetic and role == "pose" and split in ("train", "val")   # real sets have no val split
            base = open_reader(name, root, "train" if held else split, on_corrupt=p.data.on_corrupt, **options)
            reader, recorded = base, dict(options)
            if held and name == "stb":   # one whole training sequence (data.stb.val_sequence)
                reader = held_out(base, split, val_sequence=p.data.stb.val_sequence)
                recorded["val_sequence"] = p.data.stb.val_sequence
            elif held:
                reader = held_out(base, split, fraction=p.data.val_fraction)
                recorded["val_fraction"] = p.data.val_fraction
            out = prepared_dir(role, name, split)
            manifest, stats = prepare_split(reader, out, image_size=p.model.image_size, enlarge=p.prepare.enlarge,
                                            sigma=p.prepare.sigma,
                                            params={"dataset": name, "split": split, "root": str(root), **recorded})
            print(f"prepare {role}: {name}/{split}: {manifest['count']} samples ({stats.by_joints} by joints, "
                  f"{stats.by_hand_box} by hand box, {stats.whole_image} whole image)")
            if callable(getattr(base, "summary", None)):   # what was found beside the paper's counts (rwth, obman)
                print(f"prepare {role}: {base.summary()}")


def stage_masks(p: Params, role: str) -> None:
    """§3.5 GrabCut masks of every prepared split of the role (parallel, resumable)."""
    from keyhand.data.prepare import compute_split_masks

    for name, splits in role_datasets(p, role).items():
        for split in splits:
            report = compute_split_masks(prepared_dir(role, name, split), masks_dir(role, name, split),
                                         workers=p.prepare.mask_workers or None,
                                         iterations=p.prepare.mask_iterations)
            print(f"masks {role}: {name}/{split}: {report.done} GrabCut, {report.fallback} fallback, "
                  f"{len(report.failed)} failed, {report.seconds:.1f} s")
