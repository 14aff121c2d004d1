"""Train a ZeroI2V model. Read top to bottom: setup, data, model, optimiser, loop, evaluation.

    zeroi2v train training/configs/synth.yaml --set train.epochs=5
    torchrun --nproc_per_node 4 -m training.train CONFIG     # DDP: NCCL on GPU, gloo on CPU

Outputs in train.out_dir: last.pt (resume point, written atomically every epoch and every
train.checkpoint_every_steps optimiser steps), log.jsonl (one JSON object per logged step and
per evaluation), and the final evaluation's report: eval.json plus the task's chart beside it
(training/tasks.py: eval_confusion.png for classification; eval_ap.png for detection on
AVA-format data; `zeroi2v eval` also writes a detector's detections as AVA CSV).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import warnings
from contextlib import nullcontext

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from model import build_model
from model.backbone import read_pretrained
from model.precision import autocast, autocast_dtype
from training import checkpoint as ckpt_io
from training.config import ExperimentConfig, load_config
from training.data import ShardedSampler
from training.tasks import TASKS, TaskError


class TrainingError(RuntimeError):
    pass


def lr_factor(step: int, total: int, warmup: int, start: float, floor: float) -> float:
    """Linear warm-up from `start` to 1 over `warmup` steps, then cosine down to `floor`."""
    if step < warmup:
        return start + (1 - start) * step / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def train(cfg: ExperimentConfig, resume: bool = False, stop_after_steps: int | None = None) -> dict:
    """Run (or resume) the experiment; returns the final evaluation summary.

    stop_after_steps ends the run right after that optimiser step and its checkpoint, as a kill
    would: the tests use it to check that a resumed run equals an uninterrupted one.
    """
    # ---- setup: devices, processes, seeds ----
    distributed = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    if distributed:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        rank, world = dist.get_rank(), dist.get_world_size()
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
    else:
        rank, world, local_rank = 0, 1, 0
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    main_process = rank == 0
    t = cfg.train
    out_dir = cfg.path(t.out_dir)
    if t.batch_size % (world * t.grad_accum):
        raise TrainingError(
            f"train.batch_size {t.batch_size} is not divisible by {world} processes x "
            f"{t.grad_accum} accumulation steps"
        )
    per_device = t.batch_size // (world * t.grad_accum)
    torch.manual_seed(t.seed)
    amp = autocast_dtype(t.amp, device)

    # ---- data ----
    task = TASKS[cfg.model.task]
    test_spec = cfg.view_spec(train=False)
    try:
        data = task.data(cfg)
    except TaskError as e:
        raise TrainingError(str(e)) from None
    train_data, val_data, class_names = data.train, data.val, data.class_names
    model_cfg = cfg.model
    if "num_classes" in model_cfg.model_fields_set and model_cfg.num_classes != len(class_names):
        raise TrainingError(
            f"model.num_classes is {model_cfg.num_classes} but the data has {len(class_names)}"
        )
    model_cfg = model_cfg.model_copy(update={"num_classes": len(class_names)})
    sampler = ShardedSampler(len(train_data), rank, world, shuffle=True, seed=t.seed)
    val_sampler = ShardedSampler(len(val_data), rank, world, shuffle=False, pad=False)
    workers = cfg.data.num_workers

    def loader(data, sampler, batch, drop_last):
        return DataLoader(
            data,
            batch_size=batch,
            sampler=sampler,
            num_workers=workers,
            collate_fn=task.collate,
            drop_last=drop_last,
            pin_memory=device.type == "cuda",
            # Own generator: creating an iterator must not consume the global RNG (dropout),
            # or a resumed run would diverge from an uninterrupted one.
            generator=torch.Generator().manual_seed(t.seed),
            persistent_workers=False,
        )

    steps_per_epoch = len(sampler) // per_device // t.grad_accum
    if steps_per_epoch == 0:
        raise TrainingError(
            f"{len(train_data)} training videos make no full batch of {t.batch_size}"
        )
    total_steps = steps_per_epoch * t.epochs

    # ---- model and optimiser ----
    # The base read here, so its hash goes into every checkpoint: exporting later refuses a base
    # whose tensors changed since (training/checkpoint.py base_weights).
    base = None
    if model_cfg.pretrained:
        base = read_pretrained(model_cfg.backbone, model_cfg.pretrained)
    model = build_model(model_cfg, weights=base).to(device)
    task.prepare(model, t)
    masked = {id(p) for p in model.masked_parameters()}
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2 and id(p) not in masked]
    no_decay = [p for p in params if p.ndim < 2 or id(p) in masked]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": t.weight_decay},
            {"params": no_decay, "weight_decay": 0},
        ],
        lr=t.lr,
        fused=device.type == "cuda",
    )
    warmup = round(t.warmup_epochs * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: lr_factor(s, total_steps, warmup, t.warmup_start_factor, t.min_lr_factor),
    )
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)

    # ---- resume ----
    epoch, position, step, broken = 0, 0, 0, set()
    last = out_dir / "last.pt"
    if resume and last.exists():
        state = ckpt_io.load(last)
        if state["model_config"] != model_cfg.model_dump(mode="json"):
            raise TrainingError(f"{last} was trained with another model config; not resuming")
        if base and state.get("base_sha256") not in (None, base.sha256):
            raise TrainingError(
                f"{last} was trained on other base weights (hash {state['base_sha256']}, now "
                f"{base.sha256}); not resuming"
            )
        ckpt_io.restore_model(state, model)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        ckpt_io.set_rng_state(state["rng"][rank] if rank < len(state["rng"]) else state["rng"][0])
        epoch, position, step = state["epoch"], state["position"], state["step"]
        broken = set(state["broken"])
        if main_process:
            print(f"resuming {last}: epoch {epoch}, step {step}", file=sys.stderr)
    elif resume and main_process:
        print(f"no checkpoint in {out_dir}; starting a new run", file=sys.stderr)

    trained = DistributedDataParallel(model) if distributed else model
    if main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.json").write_text(cfg.model_dump_json(indent=1))
        print(
            f"train: {task.describe(data.train_split)}; val: {task.describe(data.val_split)}\n"
            f"model: {model_cfg.backbone}, {model.count_parameters() / 1e6:.2f} M params, "
            f"{model.count_parameters(trainable_only=True) / 1e6:.3f} M trainable "
            f"({model_cfg.trainable}); {world} process(es) on {device}, "
            f"{per_device} clips/device x {t.grad_accum} accum; amp {amp}",
            file=sys.stderr,
        )
    log = open(out_dir / "log.jsonl", "a") if main_process else None  # noqa: SIM115

    def write_log(record: dict) -> None:
        if log:
            log.write(json.dumps(record) + "\n")
            log.flush()

    def save_checkpoint() -> None:
        # Every rank's RNG state goes in, gathered so that rank 0 alone writes the file.
        states = [ckpt_io.rng_state()]
        if distributed:
            states = [None] * world
            dist.all_gather_object(states, ckpt_io.rng_state())
        if not main_process:
            return
        ckpt_io.save_atomic(
            {
                "format": ckpt_io.FORMAT,
                "format_version": ckpt_io.FORMAT_VERSION,
                "experiment": cfg.model_dump(mode="json"),
                "model_config": model_cfg.model_dump(mode="json"),
                "class_names": class_names,
                "preprocess": test_spec.to_preprocess(),
                "base_sha256": base.sha256 if base else None,
                "model": ckpt_io.model_state(model),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "rng": states,
                "epoch": epoch,
                "position": position,
                "step": step,
                "broken": sorted(broken),
            },
            last,
        )

    def note_broken(bad) -> None:
        for b in bad:
            if b.path not in broken:
                warnings.warn(f"skipping unreadable video {b.path}: {b.error}", stacklevel=1)
            broken.add(b.path)
        limit = cfg.data.max_broken_fraction * len(train_data)
        if len(broken) > limit:
            raise TrainingError(
                f"{len(broken)} of {len(train_data)} training videos are unreadable, more than "
                f"data.max_broken_fraction={cfg.data.max_broken_fraction}; first: "
                f"{sorted(broken)[:3]}"
            )

    # ---- the loop ----
    trained.train()
    stopped = False
    while epoch < t.epochs and not stopped:
        sampler.set_epoch(epoch, start=position)
        micro = 0  # micro-batches since the last optimiser step
        optimizer.zero_grad(set_to_none=True)
        bar = tqdm(
            loader(train_data, sampler, per_device, drop_last=True),
            total=steps_per_epoch * t.grad_accum - position // per_device,
            desc=f"epoch {epoch + 1}/{t.epochs}",
            unit="batch",
            disable=not main_process,
            dynamic_ncols=True,
        )
        tick, clips = time.perf_counter(), 0
        for inputs, targets, bad in bar:
            note_broken(bad)
            position += per_device
            if inputs is None:
                continue
            inputs = inputs.to(device, non_blocking=True)
            targets = targets.to(device, non_blocking=True)  # labels, or KeyFrameTargets
            micro += 1
            last_micro = micro == t.grad_accum
            # Gradients are all-reduced across ranks only on the last micro-batch of a step.
            sync = trained.no_sync() if distributed and not last_micro else nullcontext()
            with sync:
                with autocast(device, amp):
                    loss = task.loss(trained, inputs, targets, t) / t.grad_accum
                scaler.scale(loss).backward()
            clips += len(inputs)
            if not last_micro:
                continue
            micro = 0
            if t.clip_grad:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, t.clip_grad)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            step += 1
            elapsed = time.perf_counter() - tick
            rate = clips * world / max(elapsed, 1e-9)
            lr = scheduler.get_last_lr()[0]
            loss_value = loss.item() * t.grad_accum
            bar.set_postfix(loss=f"{loss_value:.3f}", lr=f"{lr:.2e}", clips_s=f"{rate:.1f}")
            write_log(
                {"step": step, "epoch": epoch, "loss": loss_value, "lr": lr, "clips_per_s": rate}
            )
            if t.checkpoint_every_steps and step % t.checkpoint_every_steps == 0:
                save_checkpoint()
            if stop_after_steps is not None and step >= stop_after_steps:
                stopped = True
                break
        bar.close()
        if stopped:
            if not (t.checkpoint_every_steps and step % t.checkpoint_every_steps == 0):
                save_checkpoint()
            break
        epoch, position = epoch + 1, 0
        save_checkpoint()
        final = epoch == t.epochs
        if final or (t.eval_every_epochs and epoch % t.eval_every_epochs == 0):
            val_loader = loader(
                val_data, val_sampler, max(1, per_device // test_spec.num_views), False
            )
            result = task.evaluate(model, val_loader, data.val_split, cfg, device, amp)
            numbers, line = task.summary(result)
            summary = {"epoch": epoch, "step": step, **numbers}
            write_log({"eval": summary, "broken_val": len(result.broken)})
            if main_process:
                print(f"epoch {epoch}: val {line}", file=sys.stderr)
                if final:
                    task.write_report(result, out_dir, "eval")

    if log:
        log.close()
    report = out_dir / "eval.json"
    out = json.loads(report.read_text()) if report.exists() and not stopped else {}
    if distributed:
        dist.barrier()
        dist.destroy_process_group()
    return out


def main(argv: list[str] | None = None) -> None:
    """Entry point for torchrun: python -m training.train CONFIG [--resume] [--set k=v ...]."""
    import argparse

    parser = argparse.ArgumentParser(description="train a ZeroI2V model")
    parser.add_argument("config")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args(argv)
    train(load_config(args.config, args.overrides), resume=args.resume)


if __name__ == "__main__":
    main()
