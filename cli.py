"""The `zeroi2v` command line."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import typer
import yaml
from pydantic import ValidationError

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


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
    checkpoint: Path = typer.Argument(..., help="merged .safetensors checkpoint"),
    clips: int = typer.Option(None, help="temporal clips per video (default: checkpoint's)"),
    crops: int = typer.Option(None, help="spatial crops per clip (default: checkpoint's)"),
) -> None:
    """Architecture, head layout, parameters and GFLOPs of a merged checkpoint."""
    from model import CheckpointError, load_merged, read_info
    from model.flops import model_macs

    try:
        meta = read_info(checkpoint)
        model = load_merged(checkpoint)
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
        "GFLOPs per view": f"{per_view:.2f} (multiply-adds)",
        f"GFLOPs per video ({clips}x{crops} views)": f"{per_view * clips * crops:.1f}",
        "format version": meta.format_version,
    }
    width = max(map(len, rows))
    for key, value in rows.items():
        typer.echo(f"{key:<{width}}  {value}")


@app.command()
def merge(
    config: Path = typer.Argument(..., help="YAML/JSON with a `model:` section (ZeroI2VConfig)"),
    out: Path = typer.Option(..., "--out", "-o", help="where to write MODEL.safetensors"),
) -> None:
    """Build a model from a config, fold its adapters in, and write the merged checkpoint.

    Until training exists the adapters are at their identity initialisation, so the result is
    the (pre-trained) backbone with STDHA and a fresh head.
    """
    from model import ZeroI2VConfig, build_model, merge_adapters, save_merged
    from model.backbone import BackboneError

    try:
        doc = yaml.safe_load(config.read_text())
    except (OSError, yaml.YAMLError) as e:
        _fail(f"cannot read {config}: {e}")
    if not isinstance(doc, dict) or not isinstance(doc.get("model"), dict):
        _fail(f"{config}: expected a mapping with a `model:` section")
    try:
        cfg = ZeroI2VConfig.model_validate(doc["model"])
        model = build_model(cfg)
    except ValidationError as e:
        _fail(f"{config}: invalid model config:\n{e}")
    except (BackboneError, ValueError) as e:
        _fail(f"{config}: {e}")
    class_names = doc.get("class_names")
    path = save_merged(merge_adapters(model), out, class_names, doc.get("preprocess"))
    typer.echo(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    typer.echo(json.dumps({"backbone": cfg.backbone, "frames": cfg.num_frames}))


@app.command()
def serve() -> None:
    """Start the video classification service (not built yet)."""
    _fail(
        "the service is not built yet (issue 4); for now use `zeroi2v merge` and "
        "`zeroi2v info`, and `make test`",
        code=1,
    )


if __name__ == "__main__":
    app()
