"""trainers: how keyhand's models are trained, evaluated and run (imports keyhand, never pipeline/dashboards).

    keyhand pretrain-sfe --data data/prepared/synth-obman --out runs/sfe          # §4.1.1
    keyhand train --data data/prepared/synth-stb --sfe-checkpoint runs/sfe --out runs/train   # Eq. 12
    keyhand train-gesture --framework runs/train --data data/prepared/synth-gestures --out runs/gesture
    keyhand evaluate --checkpoint runs/train --data data/prepared/synth-stb/test --out runs/eval
    keyhand predict hand.jpg --checkpoint runs/train --out predictions/

Modules: :mod:`trainers.config` (settings, profiles, one-line errors), :mod:`trainers.device` (device, bf16,
seeding), :mod:`trainers.checkpoint` (atomic per-epoch checkpoints), :mod:`trainers.train` (``fit``,
``evaluate``), :mod:`trainers.predict` (images -> joints, mesh, Fig. 6 panels, per-component times).
"""
