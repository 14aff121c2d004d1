"""ZeroI2V model configuration and the paper's head layouts (Table 6)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

TrainableSet = Literal["adapters", "full", "linear_probe", "temporal_heads"]
Task = Literal["classify", "detect"]
# Where the optional temporal embedding joins the tokens: this project's models add it after the
# image tower's ln_pre (the only place before the field existed, so old files keep it); the
# authors' code adds it before ln_pre, and their imported models record that (model/authors/).
EmbeddingPlace = Literal["after_ln_pre", "before_ln_pre"]


class ZeroI2VConfig(BaseModel):
    """Everything needed to rebuild a ZeroI2V video model.

    `temporal_offsets` is one Δt per attention head applied to every block, or one such list per
    block. `None` (or all zeros) is the plain image model with temporal mean pooling.
    `task` picks the head: "classify" (one label per clip, `num_classes` classes) or "detect"
    (AVA: `num_classes` actions per actor box, plus an actor localiser; model/detection.py).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    backbone: str = "ViT-B-16"
    pretrained: str | None = None
    num_frames: int = Field(8, ge=1)
    image_size: int = Field(224, ge=8)
    num_classes: int = Field(400, ge=1)
    temporal_offsets: list[int] | list[list[int]] | None = None
    num_adapters: Literal[0, 4, 6] = 4
    adapter_ratio: float = Field(0.25, gt=0.0, le=4.0)
    adapter_scale: float = 0.5
    adapter_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    head_dropout: float = Field(0.5, ge=0.0, lt=1.0)
    temporal_embedding: bool = False
    temporal_embedding_place: EmbeddingPlace = "after_ln_pre"
    # The authors' recipe also trains the final LayerNorm (adapters set only); their imported
    # models keep it trained, so their adapter files carry it.
    train_ln_post: bool = False
    trainable: TrainableSet = "adapters"
    task: Task = "classify"
    roi_size: int = Field(7, ge=1, description="detect: RoIAlign output side")

    @field_validator("temporal_offsets")
    @classmethod
    def _offsets_not_empty(cls, v):
        if v is not None and (len(v) == 0 or any(isinstance(o, list) and not o for o in v)):
            raise ValueError("temporal_offsets must list one offset per head")
        return v

    @model_validator(mode="after")
    def _offsets_fit_frames(self):
        for dt in _flat(self.temporal_offsets):
            if abs(dt) >= self.num_frames:
                raise ValueError(
                    f"temporal offset {dt} reaches outside a clip of {self.num_frames} frames "
                    f"(|Δt| must be < num_frames)"
                )
        if self.trainable == "temporal_heads" and not any(_flat(self.temporal_offsets)):
            raise ValueError("trainable='temporal_heads' needs at least one non-zero offset")
        return self

    def offsets_per_block(self, depth: int, heads: int) -> list[list[int]]:
        """Resolve `temporal_offsets` to one list of `heads` offsets for each of `depth` blocks."""
        offs = self.temporal_offsets
        if offs is None:
            return [[0] * heads for _ in range(depth)]
        if all(isinstance(o, int) for o in offs):
            per_block = [list(offs)] * depth
        else:
            if len(offs) != depth:
                raise ValueError(
                    f"temporal_offsets has {len(offs)} per-block lists; {self.backbone} has "
                    f"{depth} blocks"
                )
            per_block = [list(o) for o in offs]
        for i, o in enumerate(per_block):
            if len(o) != heads:
                raise ValueError(
                    f"temporal_offsets for block {i} has {len(o)} entries; {self.backbone} has "
                    f"{heads} heads per block"
                )
        return per_block


def _flat(offsets) -> list[int]:
    if offsets is None:
        return []
    return [d for o in offsets for d in (o if isinstance(o, list) else [o])]


def _layout(counts: dict[int, int], heads: int) -> list[int]:
    """Offsets from {Δt: heads}: temporal heads first, the rest spatial (Δt = 0)."""
    offsets = [dt for dt, n in counts.items() for _ in range(n)]
    return offsets + [0] * (heads - len(offsets))


# Paper Table 6: {Δt: heads} per (backbone family, frames, dataset family).
_TABLE6 = {
    ("B", 8, "kinetics"): {1: 1, -1: 1},
    ("B", 8, "ssv2"): {1: 1, -1: 1},
    ("B", 16, "kinetics"): {1: 1, -1: 1, 2: 1},
    ("B", 16, "ssv2"): {1: 1, -1: 1, 2: 1, -2: 1},
    ("B", 32, "kinetics"): {1: 1, -1: 1, 2: 1, -2: 1, 3: 1},
    ("B", 32, "ssv2"): {1: 1, -1: 1, 2: 1, -2: 1, 3: 1},
    ("L", 8, "kinetics"): {1: 2, -1: 2},
    ("L", 8, "ssv2"): {1: 2, -1: 2},
    ("L", 16, "kinetics"): {1: 2, -1: 2, 2: 1},
    ("L", 16, "ssv2"): {1: 2, -1: 2, 2: 2, -2: 2},
    ("L", 32, "kinetics"): {1: 2, -1: 2, 2: 1, -2: 1, 3: 1},
    ("L", 32, "ssv2"): {1: 2, -1: 2, 2: 1, -2: 1, 3: 1},
}
_DATASET_FAMILY = {
    "k400": "kinetics",
    "kinetics": "kinetics",
    "kinetics400": "kinetics",
    "ucf101": "kinetics",
    "hmdb51": "kinetics",
    "ssv2": "ssv2",
    "sthv2": "ssv2",
    "something-something-v2": "ssv2",
}
_BACKBONES = {"ViT-B-16": ("B", 12), "ViT-B-32": ("B", 12), "ViT-L-14": ("L", 16)}
_NUM_CLASSES = {
    "k400": 400,
    "kinetics": 400,
    "kinetics400": 400,
    "ssv2": 174,
    "sthv2": 174,
    "something-something-v2": 174,
    "ucf101": 101,
    "hmdb51": 51,
}


def paper_preset(dataset: str, backbone: str = "ViT-B-16", frames: int = 8) -> ZeroI2VConfig:
    """The paper's configuration for a dataset, backbone and clip length (METHOD.md, Table 6/7)."""
    key = dataset.lower()
    if key not in _DATASET_FAMILY:
        raise ValueError(f"unknown dataset {dataset!r}; known: {sorted(_DATASET_FAMILY)}")
    if backbone not in _BACKBONES:
        raise ValueError(f"the paper has no layout for {backbone!r}; known: {sorted(_BACKBONES)}")
    family = _DATASET_FAMILY[key]
    size, heads = _BACKBONES[backbone]
    if (size, frames, family) not in _TABLE6:
        raise ValueError(f"the paper has no layout for {frames} frames; use 8, 16 or 32")
    ssv2 = family == "ssv2"
    return ZeroI2VConfig(
        backbone=backbone,
        num_frames=frames,
        num_classes=_NUM_CLASSES[key],
        temporal_offsets=_layout(_TABLE6[(size, frames, family)], heads),
        # Six adapters (own Q, K, V input adapters) only for ViT-B, 8 frames, SSv2.
        num_adapters=6 if (ssv2 and size == "B" and frames == 8) else 4,
        adapter_ratio=0.25,
        adapter_scale=1.0 if ssv2 else 0.5,
    )
