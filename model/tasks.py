"""The task seam of the model: which head a config's task puts on the video backbone.

A task's head reads the backbone's VideoTokens (model/zeroi2v.py) and says what else its
forward takes (`example_inputs`). Adding a task here means a head module with `from_config`,
`forward(tokens, ...)` and `example_inputs`, and its name in model/config.py's `Task`.
"""

from __future__ import annotations

from model.backbone import PretrainedWeights, create_visual
from model.classification import ClassificationHead
from model.config import ZeroI2VConfig
from model.detection import DetectionHead
from model.zeroi2v import ZeroI2V, to_video_backbone

HEADS = {"classify": ClassificationHead, "detect": DetectionHead}


def build_model(
    cfg: ZeroI2VConfig, weights: PretrainedWeights | None = None, quick_gelu: bool | None = None
) -> ZeroI2V:
    """A ZeroI2V model for cfg.task: frozen (maybe pre-trained) backbone, the task's head,
    trainable set per cfg.trainable. `weights`: the base backbone already read (it replaces
    reading cfg.pretrained); `quick_gelu`: the activation a saved model recorded
    (model/backbone.py create_visual)."""
    visual = create_visual(
        cfg.backbone, cfg.image_size, weights or cfg.pretrained, quick_gelu=quick_gelu
    )
    head = HEADS[cfg.task].from_config(cfg, visual.transformer.width)
    model = ZeroI2V(cfg, to_video_backbone(visual, cfg), head)
    model.select_trainable(cfg.trainable)
    return model
