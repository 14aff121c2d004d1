"""An imported authors' model costs what the image model costs: side by side on this machine.

  plain     the open_clip ViT tower on each frame, features averaged, a linear head
  merged    the authors' checkpoint after `zeroi2v import` (STDHA, adapters folded, their
            temporal embedding added before ln_pre)
  authors   the authors' own forward and head, adapters unmerged (their code, loaded from a
            checkout outside the project as tests/data/make_authors_reference.py loads it)

One process, one random input, the models interleaved with the order rotating every repeat;
per model the median time per clip with its spread, and each repeat's ratio to `plain`. The
weights are the seeded random ones of the tests (speed does not depend on their values).

    uv pip install --target /tmp/refdeps einops
    PYTHONPATH=/tmp/refdeps:. .venv/bin/python benchmarks/bench_authors.py --repo ZeroI2V \
        --json benchmarks/results/authors_cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from model.authors.config import BUILTIN_DIR, read_config
from model.authors.convert import import_model
from model.backbone import create_visual
from tests.authors_fixtures import authors_tensors, write_authors_checkpoint
from tests.data.make_authors_reference import backbone_of, load_authors


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def timed(fn, x) -> float:
    start = time.perf_counter()
    fn(x)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, required=True, help="a checkout of their code")
    parser.add_argument("--config", default="CLIP-B_k400_8x16x1")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--clips", type=int, default=1, help="clips per call (batch)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_grad_enabled(False)
    cfg = read_config(args.config)
    text = (BUILTIN_DIR / f"{cfg.source}.py").read_text()
    with tempfile.TemporaryDirectory() as work:
        authors = load_authors(args.repo, Path(work))
        theirs, model_cfg = backbone_of(text, authors)
        head = model_cfg["cls_head"]
        shapes = {f"backbone.{k}": list(v.shape) for k, v in theirs.state_dict().items()}
        shapes["cls_head.fc_cls.weight"] = [head["num_classes"], head["in_channels"]]
        shapes["cls_head.fc_cls.bias"] = [head["num_classes"]]
        state = authors_tensors(shapes, seed=0)
        theirs.load_state_dict({k[9:]: v for k, v in state.items() if k.startswith("backbone.")})
        theirs.eval()
        fc = torch.nn.Linear(head["in_channels"], head["num_classes"])
        fc.load_state_dict({"weight": state["cls_head.fc_cls.weight"],
                            "bias": state["cls_head.fc_cls.bias"]})  # fmt: skip
        ckpt = write_authors_checkpoint(Path(work) / "theirs.pth", state)
        merged = import_model(ckpt, cfg).merged
    zcfg = merged.cfg
    plain_tower = create_visual(zcfg.backbone, zcfg.image_size, quick_gelu=True).eval()
    b, t, s = args.clips, zcfg.num_frames, zcfg.image_size
    x = torch.randn(b, 3, t, s, s)

    def plain(x):
        frames = x.transpose(1, 2).reshape(b * t, 3, s, s)
        pooled, _ = plain_tower._pool(plain_tower.transformer(plain_tower._embeds(frames)))
        return merged.head.logits(pooled.view(b, t, -1).mean(1))

    def authors_forward(x):  # their backbone, then their I3DHead at test time
        return fc(F.adaptive_avg_pool3d(theirs(x), 1).flatten(1))

    models = {"plain": plain, "merged": merged, "authors": authors_forward}
    agree = (merged(x) - authors_forward(x)).abs().max().item()
    times: dict[str, list[float]] = {name: [] for name in models}
    names = list(models)
    for r in range(args.repeats + 2):
        order = names[r % 3 :] + names[: r % 3]
        for name in order:
            seconds = timed(models[name], x)
            if r >= 2:  # two warm-up rounds
                times[name].append(seconds / b)
    result = {
        "config": cfg.source,
        "backbone": zcfg.backbone,
        "frames": t,
        "image_size": s,
        "clips_per_call": b,
        "threads": torch.get_num_threads(),
        "cpu": _cpu_name(),
        "merged_vs_authors_max_abs_logit_diff": agree,
        "seconds_per_clip": {
            n: {"median": statistics.median(v), "min": min(v), "max": max(v)}
            for n, v in times.items()
        },
        "ratio_to_plain": {
            n: {
                "median": statistics.median(a / p for a, p in zip(v, times["plain"], strict=True)),
                "min": min(a / p for a, p in zip(v, times["plain"], strict=True)),
                "max": max(a / p for a, p in zip(v, times["plain"], strict=True)),
            }
            for n, v in times.items()
            if n != "plain"
        },
        "repeats": args.repeats,
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
