"""Multi-view evaluation, the way video papers test: softmax averaged over clips x crops.

A batch holds videos as (B, V, 3, T, S, S); the model sees B*V clips, and each video's
prediction is the mean of its V softmax distributions. Counts are summed across DDP ranks, so
every rank returns the same numbers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from model.classification import video_probabilities


@dataclass
class EvalResult:
    class_names: list[str]
    confusion: torch.Tensor  # (C, C) int64: rows true class, columns predicted
    top5_correct: int
    broken: list[str] = field(default_factory=list)
    views: int = 0  # per video, as the caller's spec says (training/tasks.py)

    def headline(self) -> dict:
        """The numbers `zeroi2v eval` prints."""
        return {"videos": self.count, "views": self.views, "top1": self.top1, "top5": self.top5}

    @property
    def count(self) -> int:
        return int(self.confusion.sum())

    @property
    def top1(self) -> float:
        return float(self.confusion.diag().sum()) / max(1, self.count)

    @property
    def top5(self) -> float:
        return self.top5_correct / max(1, self.count)

    def per_class(self) -> dict[str, float | None]:
        totals = self.confusion.sum(1)
        return {
            name: (float(self.confusion[i, i]) / int(totals[i])) if totals[i] else None
            for i, name in enumerate(self.class_names)
        }

    def summary(self) -> dict:
        per_class = self.per_class()
        seen = [a for a in per_class.values() if a is not None]
        return {
            "videos": self.count,
            "top1": self.top1,
            "top5": self.top5,
            "mean_class_accuracy": sum(seen) / max(1, len(seen)),
            "per_class_accuracy": per_class,
            "confusion": self.confusion.tolist(),
            "broken_videos": self.broken,
        }


def evaluate(
    model: nn.Module,
    loader,
    class_names: list[str],
    device: torch.device,
    amp: torch.dtype | None = None,
    progress=None,
) -> EvalResult:
    """Multi-view accuracy of `model` over `loader` (which yields collate()'s triples)."""
    was_training = model.training
    model.eval()
    n = len(class_names)
    confusion = torch.zeros(n, n, dtype=torch.int64, device=device)
    top5 = torch.zeros((), dtype=torch.int64, device=device)
    broken: list[str] = []
    k = min(5, n)
    for views, labels, bad in progress(loader) if progress else loader:
        broken += [f"{b.path}: {b.error}" for b in bad]
        if views is None:
            continue
        views, labels = views.to(device, non_blocking=True), labels.to(device)
        probs = video_probabilities(model, views, amp)
        confusion += torch.bincount(labels * n + probs.argmax(-1), minlength=n * n).view(n, n)
        top5 += (probs.topk(k, -1).indices == labels[:, None]).any(-1).sum()
    if dist.is_initialized():
        dist.all_reduce(confusion)
        dist.all_reduce(top5)
        gathered: list[list[str]] = [[] for _ in range(dist.get_world_size())]
        dist.all_gather_object(gathered, broken)
        broken = [b for part in gathered for b in part]
    model.train(was_training)
    return EvalResult(class_names, confusion.cpu(), int(top5), broken)


def write_report(result: EvalResult, out_dir: Path, name: str = "eval") -> dict[str, Path]:
    """`<name>.json` with every number and `<name>_confusion.png`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / f"{name}.json"
    json_path.write_text(json.dumps(result.summary(), indent=1))
    png_path = out_dir / f"{name}_confusion.png"
    plot_confusion(result.confusion, result.class_names, png_path)
    return {"json": json_path, "png": png_path}


def plot_confusion(confusion: torch.Tensor, class_names: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt

    n = len(class_names)
    rows = confusion.sum(1, keepdim=True).clamp(min=1)
    normalised = (confusion / rows).numpy()
    side = min(40.0, max(4.0, 0.35 * n + 2))
    fig, ax = plt.subplots(figsize=(side, side))
    image = ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    if n <= 60:  # beyond that, names are unreadable anyway
        ax.set_xticks(range(n), class_names, rotation=90, fontsize=7)
        ax.set_yticks(range(n), class_names, fontsize=7)
        if n <= 20:
            for i in range(n):
                for j in range(n):
                    if confusion[i, j]:
                        color = "white" if normalised[i, j] > 0.5 else "black"
                        ax.text(j, i, int(confusion[i, j]), ha="center", va="center",
                                fontsize=7, color=color)  # fmt: skip
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"confusion ({int(confusion.sum())} videos)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
