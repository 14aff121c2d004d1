"""Training checkpoints: everything needed to resume exactly, written atomically.

A checkpoint holds the trainable tensors (adapters, head, ...; the whole backbone too when it
was randomly initialised, since nothing else could rebuild it), the optimiser, scheduler and
gradient-scaler states, the RNG states, the epoch and the position inside it. It is written to
a temporary file and renamed over the old one, so a run killed at any moment leaves either the
previous checkpoint or the new one, never a torn file.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import torch

from model import ZeroI2V, ZeroI2VConfig, build_model
from model.backbone import PretrainedWeights, read_pretrained
from model.checkpoint import trained_tensors, write_atomic

FORMAT = "zeroi2v.train"
FORMAT_VERSION = 1


class TrainCheckpointError(ValueError):
    pass


def model_state(model: ZeroI2V) -> dict[str, torch.Tensor]:
    """The tensors a checkpoint must carry to rebuild `model` from its config: what trains
    (model/checkpoint.py trained_tensors, also what an adapter checkpoint holds), or all of
    them when the backbone was randomly initialised, which its config cannot reproduce."""
    tensors = model.state_dict() if model.cfg.pretrained is None else trained_tensors(model)
    return {k: v.detach().cpu().clone() for k, v in tensors.items()}


def rng_state() -> dict:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_atomic(obj: dict, path: Path) -> None:
    write_atomic(path, lambda tmp: torch.save(obj, tmp))


def load(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise TrainCheckpointError(f"{path}: no such training checkpoint")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and torch raise many types for damaged files
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TrainCheckpointError(
            f"{path}: not a readable training checkpoint (truncated or another format): {first}"
        ) from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise TrainCheckpointError(f"{path}: not a zeroi2v training checkpoint")
    if ckpt.get("format_version", 0) > FORMAT_VERSION:
        raise TrainCheckpointError(f"{path}: written by a newer zeroi2v")
    return ckpt


def restore_model(ckpt: dict, model: ZeroI2V) -> None:
    missing = [n for n, p in model.named_parameters() if p.requires_grad and n not in ckpt["model"]]
    result = model.load_state_dict(ckpt["model"], strict=False)
    if result.unexpected_keys or missing:
        raise TrainCheckpointError(
            f"checkpoint does not fit the model: unexpected {result.unexpected_keys[:5]}, "
            f"missing trainable {missing[:5]}"
        )


def base_weights(ckpt: dict) -> PretrainedWeights | None:
    """The pre-trained backbone the run was built on, read again; refused if its tensors are
    not the ones the run recorded (checkpoints written before it was recorded: not checked).
    None for a randomly initialised backbone, which the checkpoint carries whole."""
    cfg = ZeroI2VConfig.model_validate(ckpt["model_config"])
    if cfg.pretrained is None:
        return None
    weights = read_pretrained(cfg.backbone, cfg.pretrained)
    recorded = ckpt.get("base_sha256")
    if recorded is not None and weights.sha256 != recorded:
        raise TrainCheckpointError(
            f"the base weights {cfg.pretrained!r} ({weights.path}) changed since the run was "
            f"trained: their tensors hash to {weights.sha256}, the run recorded {recorded}"
        )
    return weights


def rebuild_model(
    ckpt: dict, weights: PretrainedWeights | None = None
) -> tuple[ZeroI2V, list[str], dict]:
    """The trained (unmerged) model of a checkpoint, its class names and experiment config.
    `weights`: base_weights(ckpt), if the caller has them already."""
    cfg = ZeroI2VConfig.model_validate(ckpt["model_config"])
    model = build_model(cfg, weights=weights or base_weights(ckpt))
    restore_model(ckpt, model)
    return model.eval(), list(ckpt["class_names"]), ckpt["experiment"]
