"""trainers: how keyhand's models are trained, evaluated and run (imports keyhand, never pipeline/dashboards).

    keyhand pretrain-sfe --out runs/sfe                                  # §4.1.1 (params.yaml, its data)
    keyhand train --sfe-checkpoint runs/sfe --out runs/mine               # Eq. 12
    keyhand train-gesture --framework runs/train --out runs/gesture
    keyhand evaluate --checkpoint runs/train --out runs/eval
    keyhand predict hand.jpg --checkpoint runs/train --out predictions/

Modules: :mod:`trainers.run` (the one path: ``fit_stage``, ``evaluate_checkpoint``), :mod:`trainers.config`
(settings, profiles, run identity), :mod:`trainers.device` (device, bf16, seeding), :mod:`trainers.checkpoint`
(atomic per-epoch checkpoints), :mod:`trainers.train` (``fit``, the epoch loop, ``evaluate``),
:mod:`trainers.gesture` (the §4.3.3 classifier stage), :mod:`trainers.predict` (images -> joints, mesh,
Fig. 6 panels, per-component times).
"""
