"""Write cv2_resize_reference.safetensors: what mmaction2's Resize(scale=(-1, S)) makes of a few
frames, for tests/test_mmaction_protocol.py to hold video.views.resize_short_side's "mmaction2"
resize against. opencv is not a dependency of this project; run this once, outside it:

    .venv/bin/uv pip install --target /tmp/cv2deps "opencv-python-headless<5"
    PYTHONPATH=/tmp/cv2deps .venv/bin/python tests/data/make_cv2_resize_reference.py

(the 4.x series, which mmaction2 1.x ran on). The file holds, for each input frame `in_<name>`
(H, W, 3) uint8, and each short side S, `out_<name>_<S>`: mmcv.imresize's cv2.resize
(INTER_LINEAR) to mmcv.rescale_size's size. Both are written out here, from mmcv 2.x's
mmcv/image/geometric.py, so that mmcv is not needed either.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from safetensors.numpy import save_file

HERE = Path(__file__).parent
SHORT_SIDES = (21, 24, 32, 96)  # down and up; 24 halves 48 exactly (cv2's INTER_AREA shortcut)


def rescale_size(w: int, h: int, short: int) -> tuple[int, int]:
    """mmcv.rescale_size((w, h), (inf, short)): Resize(scale=(-1, short)) leaves the long side
    unbounded, so the factor is short / min(h, w); each side int(side * factor + 0.5)."""
    factor = min(np.inf / max(h, w), short / min(h, w))
    return int(w * float(factor) + 0.5), int(h * float(factor) + 0.5)


def frames() -> dict[str, np.ndarray]:
    """Uniform noise (the worst case for rounding) and a smooth gradient with a little noise
    (closer to footage), landscape and portrait, odd and even sides."""
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    y, x = np.mgrid[0:48, 0:64]
    smooth = np.stack([x * 4, y * 5, (x + y) * 2], -1) + rng.normal(0, 6, (48, 64, 3))
    smooth = np.clip(np.round(smooth), 0, 255).astype(np.uint8)
    out = {}
    for name, image in (("noise", noise), ("smooth", smooth)):
        out[f"{name}_landscape"] = image
        out[f"{name}_portrait"] = np.ascontiguousarray(image.transpose(1, 0, 2))
    return out


def main() -> None:
    tensors = {}
    for name, image in frames().items():
        tensors[f"in_{name}"] = image
        h, w = image.shape[:2]
        for short in SHORT_SIDES:
            size = rescale_size(w, h, short)
            tensors[f"out_{name}_{short}"] = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
    path = HERE / "cv2_resize_reference.safetensors"
    save_file(tensors, str(path), metadata={"cv2": cv2.__version__})
    print(f"{path}: {path.stat().st_size} bytes, cv2 {cv2.__version__}")


if __name__ == "__main__":
    main()
