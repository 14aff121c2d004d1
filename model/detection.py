"""AVA action detection on a ZeroI2V backbone: actor boxes in, multi-label actions out.

Data flow: frames (B, 3, T, H, W) -> the same video transformer as classification (STDHA,
adapters, merged the same way) -> last-block patch tokens after ln_post, (B, T, h, w, d) ->
mean over T -> one feature map (B, d, h, w) for the clip's key frame
(VideoTokens.key_frame_map). The DetectionHead's two parts read it:

  ActionHead      RoIAlign (roi_size x roi_size) per actor box, max-pool, dropout, linear:
                  one logit per action, sigmoid (an actor can sit and talk at once).
  ActorLocaliser  CenterNet-style: per cell, a heatmap logit "an actor's centre is here" plus
                  the sub-cell centre offset and the box size; heatmap peaks are actor boxes.

The heads are the only parameters outside the backbone, so the merged checkpoint stays
"backbone in open_clip format + head" (model/checkpoint.py). Boxes are normalised
(x1, y1, x2, y2) in [0, 1] of the model's input frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_align

from model.config import ZeroI2VConfig
from model.zeroi2v import VideoTokens, ZeroI2V

# The localiser's score from which a box counts as an actor, unless a caller says otherwise:
# the default of training's evaluation, the service and the CLI.
BOX_THRESHOLD = 0.3


class ActionHead(nn.Module):
    def __init__(self, dim: int, num_actions: int, roi_size: int = 7, dropout: float = 0.5):
        super().__init__()
        self.roi_size = roi_size
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(dim, num_actions)
        nn.init.normal_(self.fc.weight, std=0.02)
        nn.init.zeros_(self.fc.bias)

    def forward(self, feature_map: torch.Tensor, boxes: list[torch.Tensor]) -> torch.Tensor:
        """feature_map (B, d, h, w), boxes[b] (K_b, 4) normalised -> logits (sum K_b, actions)."""
        regions = roi_features(feature_map, boxes, self.roi_size)
        return self.fc(self.dropout(regions.amax(dim=(2, 3))))


def roi_features(feature_map: torch.Tensor, boxes: list[torch.Tensor], size: int) -> torch.Tensor:
    """RoIAlign of normalised boxes on a (B, d, h, w) map -> (sum K_b, d, size, size).

    aligned=True: pixel-continuous coordinates (cell i covers [i, i+1)), so a box's bins are
    centred where the box is, with no half-cell shift.
    """
    h, w = feature_map.shape[-2:]
    scale = torch.tensor([w, h, w, h], dtype=torch.float32, device=feature_map.device)
    rois = [b.to(feature_map.device, torch.float32) * scale for b in boxes]
    return roi_align(
        feature_map.float(), rois, output_size=size, spatial_scale=1.0, sampling_ratio=2,
        aligned=True,
    )  # fmt: skip


class ActorLocaliser(nn.Module):
    """Channels per cell: heatmap logit, centre offset (x, y) in the cell, box size (w, h)."""

    # The heatmap starts at a prior of 0.1 everywhere (CenterNet's initialisation): with the
    # default 0.5, the many empty cells swamp the first steps of the focal loss.
    PRIOR = 0.1

    def __init__(self, dim: int, hidden: int = 128):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(dim, hidden, 3, padding=1), nn.GELU(), nn.Conv2d(hidden, 5, 1)
        )
        nn.init.constant_(self.net[2].bias[0], -torch.log(torch.tensor(1 / self.PRIOR - 1)).item())

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        return self.net(feature_map.float())

    def loss(self, maps: torch.Tensor, boxes: list[torch.Tensor]) -> torch.Tensor:
        """CenterNet's loss for (B, 5, h, w) outputs and each clip's true boxes (K_b, 4):
        penalty-reduced focal loss on the heatmap, L1 on offset and size at the centre cells."""
        heat_target, cells, offsets, sizes = localiser_targets(boxes, maps.shape[-2:])
        heat_target = heat_target.to(maps.device)
        logit = maps[:, 0]
        prob = logit.sigmoid().clamp(1e-4, 1 - 1e-4)
        centre = heat_target.eq(1)
        pos = -(1 - prob).pow(2) * prob.log() * centre
        # Cells near a centre are only mildly penalised: (1 - target)^4 fades the loss there.
        neg = -(1 - heat_target).pow(4) * prob.pow(2) * (1 - prob).log() * ~centre
        count = max(1, len(cells))
        loss = (pos.sum() + neg.sum()) / count
        if cells:
            b, cy, cx = (torch.tensor(c, device=maps.device) for c in zip(*cells, strict=True))
            at = maps[b, :, cy, cx]  # (N, 5)
            loss = loss + F.l1_loss(at[:, 1:3].sigmoid(), offsets.to(maps.device))
            loss = loss + 5 * F.l1_loss(at[:, 3:5].sigmoid(), sizes.to(maps.device))
        return loss

    @torch.no_grad()
    def decode(
        self, maps: torch.Tensor, threshold: float, max_actors: int
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per clip: boxes (K, 4) normalised and their scores (K,), peaks >= threshold."""
        maps = maps.float()  # under bf16 autocast, confident neighbours would tie at 1.0
        heat = maps[:, 0].sigmoid()
        h, w = heat.shape[-2:]
        # A peak is a cell no lower than its 8 neighbours: CenterNet's NMS.
        peaks = heat == F.max_pool2d(heat[:, None], 3, stride=1, padding=1)[:, 0]
        out = []
        for b in range(maps.shape[0]):
            scores = torch.where(peaks[b], heat[b], torch.zeros_like(heat[b])).flatten()
            top = scores.topk(min(max_actors, scores.numel()))
            keep = top.values >= threshold
            idx, score = top.indices[keep], top.values[keep]
            cy, cx = idx // w, idx % w
            off = maps[b, 1:3, cy, cx].sigmoid()
            size = maps[b, 3:5, cy, cx].sigmoid()
            centre_x = (cx + off[0]) / w
            centre_y = (cy + off[1]) / h
            boxes = torch.stack(
                [
                    centre_x - size[0] / 2,
                    centre_y - size[1] / 2,
                    centre_x + size[0] / 2,
                    centre_y + size[1] / 2,
                ],
                dim=1,
            ).clamp(0, 1)
            out.append((boxes, score))
        return out


def localiser_targets(boxes: list[torch.Tensor], grid: tuple[int, int]):
    """CenterNet targets on an (h, w) grid: a Gaussian heatmap per clip (1 at each box's centre
    cell, sigma a sixth of the box's size in cells), and per box its (clip, row, col) cell, the
    centre's offset inside that cell and its normalised size."""
    h, w = grid
    heat = torch.zeros(len(boxes), h, w)
    ys = torch.arange(h, dtype=torch.float32)[:, None]
    xs = torch.arange(w, dtype=torch.float32)[None, :]
    cells, offsets, sizes = [], [], []
    for b, clip_boxes in enumerate(boxes):
        for x1, y1, x2, y2 in clip_boxes.float().cpu().tolist():
            cx, cy = (x1 + x2) / 2 * w, (y1 + y2) / 2 * h
            col, row = min(int(cx), w - 1), min(int(cy), h - 1)
            sx = max((x2 - x1) * w / 6, 0.5)
            sy = max((y2 - y1) * h / 6, 0.5)
            g = torch.exp(-((xs - col) ** 2) / (2 * sx**2) - ((ys - row) ** 2) / (2 * sy**2))
            heat[b] = torch.maximum(heat[b], g)
            cells.append((b, row, col))
            offsets.append((cx - col, cy - row))
            sizes.append((x2 - x1, y2 - y1))
    return (
        heat,
        cells,
        torch.tensor(offsets, dtype=torch.float32).view(-1, 2),
        torch.tensor(sizes, dtype=torch.float32).view(-1, 2),
    )


@dataclass
class ActorDetections:
    """One clip's actors: boxes (K, 4) normalised, box scores (K,), action probabilities (K, A).
    The AVA score of (actor, action) is box_score x action probability."""

    boxes: torch.Tensor
    box_scores: torch.Tensor
    action_probs: torch.Tensor

    @property
    def scores(self) -> torch.Tensor:
        return self.box_scores[:, None] * self.action_probs


class DetectionHead(nn.Module):
    """forward(tokens, boxes) -> (action logits (sum K_b, actions), localiser maps (B, 5, h, w))."""

    # The box used wherever a detection model needs an example input (FLOPs, export, warm-up).
    EXAMPLE_BOX = (0.25, 0.25, 0.75, 0.75)

    def __init__(self, dim: int, num_actions: int, roi_size: int, dropout: float):
        super().__init__()
        self.actions = ActionHead(dim, num_actions, roi_size, dropout)
        self.localiser = ActorLocaliser(dim)

    @classmethod
    def from_config(cls, cfg: ZeroI2VConfig, width: int) -> DetectionHead:
        return cls(width, cfg.num_classes, cfg.roi_size, cfg.head_dropout)

    def forward(
        self, tokens: VideoTokens, boxes: list[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if len(boxes) != tokens.clips:
            raise ValueError(f"{len(boxes)} box lists for {tokens.clips} clips")
        fmap = tokens.key_frame_map()
        return self.actions(fmap, boxes), self.localiser(fmap)

    def example_inputs(self, clips: int, device: torch.device) -> tuple:
        """One actor box per clip (each further box adds only the small action head)."""
        return ([torch.tensor([self.EXAMPLE_BOX], device=device)] * clips,)

    @torch.inference_mode()
    def detect(
        self,
        tokens: VideoTokens,
        boxes: list[torch.Tensor | None] | None = None,
        box_scores: list[torch.Tensor | None] | None = None,
        threshold: float = BOX_THRESHOLD,
        max_actors: int = 20,
    ) -> list[ActorDetections]:
        """Actors and their action probabilities per clip. Clips with given boxes use them
        (scores: box_scores, or 1 for boxes a user drew); the others use the localiser's
        boxes with score >= threshold."""
        n = tokens.clips
        boxes = boxes if boxes is not None else [None] * n
        box_scores = box_scores if box_scores is not None else [None] * n
        fmap = tokens.key_frame_map()
        found = self.localiser.decode(self.localiser(fmap), threshold, max_actors)
        chosen, scores = [], []
        for given, given_scores, (own, own_scores) in zip(boxes, box_scores, found, strict=True):
            if given is None:
                chosen.append(own)
                scores.append(own_scores)
            else:
                given = given.to(fmap.device, torch.float32).view(-1, 4)
                chosen.append(given)
                scores.append(
                    torch.ones(len(given), device=fmap.device)
                    if given_scores is None
                    else given_scores.to(fmap.device, torch.float32)
                )
        probs = self.actions(fmap, chosen).float().sigmoid()
        out = []
        for b, s, p in zip(chosen, scores, probs.split([len(b) for b in chosen]), strict=True):
            out.append(ActorDetections(b.float().cpu(), s.float().cpu(), p.cpu()))
        return out


@torch.inference_mode()
def detect_actors(
    model: ZeroI2V,
    x: torch.Tensor,
    boxes: list[torch.Tensor | None] | None = None,
    box_scores: list[torch.Tensor | None] | None = None,
    threshold: float = BOX_THRESHOLD,
    max_actors: int = 20,
) -> list[ActorDetections]:
    """A detection model's actors for clips x (B, 3, T, H, W): DetectionHead.detect on them."""
    return model.head.detect(model.encode(x), boxes, box_scores, threshold, max_actors)
