"""Data stages: ``prepare`` (§3.1 crops) and ``masks`` (§3.5 GrabCut) of each data role."""

from __future__ import annotations

from pipeline.params import Params
from pipeline.stages.common import masks_dir, prepared_dir, role_datasets


def stage_prepare(p: Params, role: str) -> None:
    """§3.1 crops of every split of the role's datasets into the prepared cache."""
    from keyhand.data.prepare import open_reader, prepare_split

    for name, splits in role_datasets(p, role).items():
        root = p.dataset_root(name)
        options = p.reader_options(name)  # data.obman.mode, data.stb.palm_to_wrist
        for split in splits:
            reader = open_reader(name, root, split, on_corrupt=p.data.on_corrupt, **options)
            out = prepared_dir(role, name, split)
            manifest, stats = prepare_split(reader, out, image_size=p.model.image_size, enlarge=p.prepare.enlarge,
                                            sigma=p.prepare.sigma,
                                            params={"dataset": name, "split": split, "root": str(root), **options})
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
