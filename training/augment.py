"""Training augmentation for clips, with torchvision.transforms.v2.

Frames arrive as uint8 (T, 3, H, W). Wrapped as a `tv_tensors.Video`, every v2 transform draws
its random parameters once per call, so all frames of a clip get the same crop, flip, RandAugment
ops and erased box: the motion between frames is left intact.

The horizontal flip is done here, not by v2.RandomHorizontalFlip, because on
Something-Something v2 a flip changes the label ("pushing left" becomes "pushing right").
"""

from __future__ import annotations

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from training.config import AugmentConfig


class ClipAugment:
    def __init__(
        self,
        cfg: AugmentConfig,
        image_size: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        class_names: list[str],
    ):
        self.flip = cfg.flip
        self.label_after_flip = flip_label_map(cfg.flip_label_pairs, class_names)
        geometric = [v2.RandomResizedCrop(image_size, scale=cfg.crop_scale, antialias=True)]
        photometric = []
        if cfg.randaugment_ops and cfg.randaugment_magnitude:
            photometric.append(
                v2.RandAugment(num_ops=cfg.randaugment_ops, magnitude=cfg.randaugment_magnitude)
            )
        self.pre_flip = v2.Compose(geometric)
        self.post_flip = v2.Compose(
            [
                *photometric,
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(mean=list(mean), std=list(std)),
                *([v2.RandomErasing(p=cfg.random_erasing)] if cfg.random_erasing else []),
            ]
        )

    def __call__(self, frames: torch.Tensor, label: int) -> tuple[torch.Tensor, int]:
        """uint8 (T, 3, H, W) -> float (3, T, S, S) normalised, and the (maybe swapped) label."""
        clip = self.pre_flip(tv_tensors.Video(frames))
        if self.flip and torch.rand(()) < self.flip:
            clip = clip.flip(-1)
            label = self.label_after_flip.get(label, label)
        clip = self.post_flip(tv_tensors.Video(clip))
        return clip.as_subclass(torch.Tensor).transpose(0, 1).contiguous(), label


def flip_label_map(pairs: list[tuple[str, str]], class_names: list[str]) -> dict[int, int]:
    """{label: label after a horizontal flip} for the given class-name pairs, both directions."""
    index = {name: i for i, name in enumerate(class_names)}
    out: dict[int, int] = {}
    for a, b in pairs:
        unknown = [n for n in (a, b) if n not in index]
        if unknown:
            raise ValueError(f"augment.flip_label_pairs names unknown classes {unknown}")
        out[index[a]], out[index[b]] = index[b], index[a]
    return out
