"""Write the shipped demo model's outputs that later code must reproduce (tests/test_demo.py).

    .venv/bin/python -m tests.data.make_demo_reference

Written when the shipped adapters (training/demo_model) were made, at the commit that added
them. Regenerate only together with a rebuilt demo model, never to make a test pass.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from model import load_merged
from training.demo import SHIPPED

OUT = Path(__file__).parent / "demo_reference.safetensors"


def reference_input() -> torch.Tensor:
    """Two clips of the demo model's shape (8 frames of 84 px), normalised-looking values."""
    return torch.randn(2, 3, 8, 84, 84, generator=torch.Generator().manual_seed(0))


def main() -> None:
    model = load_merged(SHIPPED)
    x = reference_input()
    with torch.inference_mode():
        logits = model(x)
    save_file({"logits": logits.contiguous()}, str(OUT))
    print(f"wrote {OUT}: logits {tuple(logits.shape)}")


if __name__ == "__main__":
    main()
