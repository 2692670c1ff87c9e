"""The model's settings (paper §3, Tables 1-4): one pydantic section, the ``model`` section of params.yaml.

    from keyhand.model.config import ModelConfig        # also importable from keyhand.model.framework
    cfg = ModelConfig(image_size=64, sfe_channels=32, ve_input_size=64, dense_scale=1 / 64)
    cfg.replace(pca_comps=15)                            # a validated copy

No torch here: params.yaml's schema (and so every DVC stage) imports this module, not the network code.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, StrictBool, StrictInt, ValidationError, ValidationInfo, field_validator

from keyhand.config import Section, SectionError, not_bool

__all__ = ["ModelConfig", "PositiveFloat", "VE_DENSE"]

#: The dense-layer variants of Table 2 (widths: keyhand.model.ve.DENSE).
VE_DENSE = ("VE1", "VE2", "VE3")


#: A finite number > 0 (a YAML true/false is not a number).
PositiveFloat = Annotated[float, BeforeValidator(not_bool), Field(gt=0, allow_inf_nan=False)]


class ModelConfig(Section):
    """The model's knobs; every ablation of Tables 1-4 is a field. Validated on construction.

    The one model schema: the ``model`` section of params.yaml, the trainers' configuration and the run hash
    are this class, so a field added here appears in all three. A bad value raises a ValueError
    (:class:`keyhand.config.SectionError`) with one line ``model.<key>: must be ..., got ...``.
    ``cfg.replace(pca_comps=15)`` = a validated copy.
    """

    sfe: Literal["none", "heatmaps", "heatmaps+silhouette"] = "heatmaps+silhouette"   # Table 1
    fusion: Literal["sum", "concat"] = "concat"        # final feature f                              (Table 4)
    ve_blocks: StrictInt = Field(4, ge=1, le=6, description="paper: 2, 4, 5")                       # Table 2
    ve_dense: Literal[VE_DENSE] = "VE2"  # type: ignore[valid-type]  # VE1 3x1024 | VE2 2x2048+1x1024 | VE3
    pca_comps: StrictInt = Field(45, ge=1, le=45, description="paper: 15, 30, 45")                  # Table 3
    skeleton_adaptation: StrictBool = True                                                          # Table 4
    image_size: StrictInt = 256                        # input crop side; heatmap side = image_size // 4
    sfe_channels: StrictInt = Field(256, ge=4, description="paper 256")      # hourglass width
    ve_input_size: StrictInt = Field(256, ge=2, description="paper 256")     # f is resized to this (§3.3)
    ve_channels: StrictInt = Field(64, ge=2, description="paper 64")         # first abstraction block width
    dense_scale: PositiveFloat = 1.0                   # multiplies the dense widths (1024/2048)
    render_size: StrictInt = Field(64, ge=1, description="paper 64")         # rendered silhouette side
    render_mode: Literal["nmr", "soft"] = "nmr"
    soft_sigma: PositiveFloat = 1e-4
    mano_path: str | None = None                       # None = the license-free proxy hand
    side: Literal["right", "left"] = "right"
    flat_hand_mean: StrictBool = False
    rot_repr: Literal["axis_angle", "6d"] = "axis_angle"   # R of §3.3: the paper's axis-angle, or continuous 6D
    # the VE head's output scaling (keyhand.model.ve): θ, β = head_gain × raw output; the 6D identity bias's
    # column norm (1, 1 = the paper's plain linear head)
    head_gain: PositiveFloat = 1.0
    rot6d_norm: PositiveFloat = 1.0
    # "mano" = the paper's HE (§3.4); "direct" = the direct-regression CONTROL: the same SFE and VE with a linear
    # head regressing the 63 root-relative joint coordinates (no MANO, 2D, silhouette or L_Reg: train it
    # with loss.joints_2d = loss.mask = loss.reg = 0)
    estimator: Literal["mano", "direct"] = "mano"

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as e:
            raise SectionError(e, type(self), prefix=("model",)) from None

    @field_validator("image_size")
    @classmethod
    def _image_size(cls, s: int) -> int:
        if s < 32 or s % 16 or (s // 16) & (s // 16 - 1):
            raise ValueError("must be 16 * 2^k with k >= 1: 32, 64, 128, 256 (paper), 512, ...")
        return s

    @field_validator("ve_input_size")
    @classmethod
    def _ve_input_size(cls, v: int, info: ValidationInfo) -> int:
        blocks = info.data.get("ve_blocks")
        if isinstance(blocks, int) and v >> blocks < 1:
            raise ValueError(f"must be >= 2^ve_blocks = {2**blocks}")
        return v

    def replace(self, **changes: Any) -> ModelConfig:
        """A validated copy with ``changes`` applied."""
        return type(self)(**{**self.model_dump(), **changes})
