"""Data stages: ``prepare`` (§3.1 crops) and ``masks`` (§3.5 GrabCut) of each data role."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pipeline.params import Params
from pipeline.stages.common import masks_dir, prepared_dir, role_datasets


class held_out(Sequence):  # noqa: N801 - reads as a function at the call site
    """A real dataset's ``train`` reader split deterministically into train and val: sample ``i`` is val when
    ``i % round(1 / fraction) == 0`` (every k-th sample, spread over the recording; no randomness, so the
    same data gives the same split). ``part``: "train" (the rest) or "val". Delegates ``hand_box``,
    ``vertices`` (index-mapped) and ``skipped`` to the reader."""

    def __init__(self, reader: Any, fraction: float, part: str) -> None:
        k = max(2, round(1.0 / fraction))
        self.reader, self.part = reader, part
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
        options = p.reader_options(name)  # data.obman.mode, data.stb.palm_to_wrist
        synthetic = name.startswith("synth-")
        for split in splits:
            held = not synthetic and role == "pose" and split in ("train", "val")   # real sets have no val split
            reader = open_reader(name, root, "train" if held else split, on_corrupt=p.data.on_corrupt, **options)
            recorded = dict(options)
            if held:
                reader = held_out(reader, p.data.val_fraction, split)
                recorded["val_fraction"] = p.data.val_fraction
            out = prepared_dir(role, name, split)
            manifest, stats = prepare_split(reader, out, image_size=p.model.image_size, enlarge=p.prepare.enlarge,
                                            sigma=p.prepare.sigma,
                                            params={"dataset": name, "split": split, "root": str(root), **recorded})
            print(f"prepare {role}: {name}/{split}: {manifest['count']} samples ({stats.by_joints} by joints, "
                  f"{stats.by_hand_box} by hand box, {stats.whole_image} whole image)")


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
