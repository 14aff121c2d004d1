"""Checkpoints in the ZeroI2V authors' layout, made from a seed, and the cases the reference
outputs in tests/data/authors/ were computed for (by tests/data/make_authors_reference.py, run
against the authors' own code outside the project).

A case is a config (a built-in one with a smaller input, or a tiny one written here) and a seed;
its tensors are not stored: `authors_tensors` makes them again from the key names and shapes
the reference run recorded, each from its own generator, so they do not depend on order.
The weights are random but shaped like trained ones: unit-ish LayerNorm gains, fan-in scaled
matrices, adapters and temporal embedding far from zero (so a misplaced adapter, embedding or
head order changes the logits).
"""

from __future__ import annotations

import json
import zlib
from collections import OrderedDict
from pathlib import Path

import torch

DATA = Path(__file__).parent / "data" / "authors"
BUILTIN = Path(__file__).parents[1] / "model" / "authors" / "configs"
VIEWS = 2  # views per reference input (a batch for the model; the protocol is tested apart)


def tensor_for(key: str, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(key.encode()))
    x = torch.randn(shape, generator=g)
    leaf = key.rsplit(".", 1)[-1]
    norm = any(f"{n}." in key for n in ("ln_1", "ln_2", "ln_pre", "ln_post"))
    if norm and leaf == "weight":
        return 1 + 0.1 * x
    if leaf == "bias" or norm:
        return 0.05 * x
    if key.endswith("temporal_embedding"):
        return 0.2 * x
    if key.endswith(("class_embedding", "positional_embedding")):
        return x * shape[-1] ** -0.5
    fan_in = 1
    for n in shape[1:]:
        fan_in *= n
    return x * fan_in**-0.5


def authors_tensors(shapes: dict[str, list[int]], seed: int, dtype=torch.float32) -> dict:
    return OrderedDict(
        (k, tensor_for(k, tuple(s), seed).to(dtype)) for k, s in sorted(shapes.items())
    )


def case_tensors(meta: dict) -> dict[str, torch.Tensor]:
    """A recorded case's checkpoint tensors: made from the seed, or (merged by their reparam
    tool) read from the case's stored file."""
    if meta["merged"]:
        from safetensors.torch import load_file

        return OrderedDict(sorted(load_file(DATA / f"{meta['name']}.safetensors").items()))
    dtype = torch.float16 if meta["dtype"] == "fp16" else torch.float32
    return authors_tensors(meta["shapes"], meta["seed"], dtype)


def write_authors_checkpoint(path: Path, state: dict) -> Path:
    """An mmengine checkpoint as their training writes it: meta, state_dict (and more, which an
    importer skips)."""
    torch.save({"meta": {"epoch": 40, "iter": 1, "mmengine_version": "0.7.3"},
                "state_dict": state}, path)  # fmt: skip
    return path


def reference(case: str) -> dict:
    """The recorded case: config text, seed, dtype, tensor shapes, input shape and logits."""
    meta = json.loads((DATA / f"{case}.json").read_text())
    meta["name"] = case
    meta["config_path"] = DATA / f"{case}.py"
    return meta


def reference_input(meta: dict) -> torch.Tensor:
    g = torch.Generator().manual_seed(meta["seed"] + 7)
    return torch.randn(meta["input_shape"], generator=g)
