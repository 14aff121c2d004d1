"""The authors' mmaction2 configs, read as data and turned into this project's terms.

A config is a Python file, and one downloaded beside a checkpoint is not ours to run: it is
parsed (`ast`) and only its literal `model = dict(...)`, `test_pipeline = [...]` and
`ann_file_test = '...'` are read, `dict(...)` calls interpreted here. `_base_` inheritance and
anything that is not a literal are refused with the line that has them. The nine configs the
authors publish are built in (model/authors/configs/), so a checkpoint imports with the name.

From the config come: the backbone (width, depth, heads and patch size name an open_clip tower),
frames, adapters (count and scale), the STDHA layout turned into one Δt per head exactly as the
authors' TemporalShift moves channels, the classifier, and the test protocol (mmaction2's
sampling, resize, crops and normalisation: video/views.py, protocol "mmaction2").
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from model.config import ZeroI2VConfig

BUILTIN_DIR = Path(__file__).parent / "configs"
LABEL_MAPS = {  # mmaction2's tools/data label maps, shipped for the datasets of released models
    "kinetics400": Path(__file__).parent / "label_maps" / "kinetics400.txt",
    "sthv2": Path(__file__).parent / "label_maps" / "sthv2.txt",
}
_READ = ("model", "test_pipeline", "ann_file_test")
_CHECKED = ("model", "test_pipeline")  # nothing but their assignment may touch them

# Backbone shapes of open_clip towers: (width, layers, heads, patch) -> open_clip model name.
# The project's tiny towers (model/open_clip_configs) are searched too, for tests.
_TOWERS = {
    (768, 12, 12, 16): "ViT-B-16",
    (768, 12, 12, 32): "ViT-B-32",
    (1024, 24, 16, 14): "ViT-L-14",
}
BACKBONES = ("ViT_Zero_CLIP", "ViT_Zero_CLIP_long", "ViT_Zero_CLIP_ablation", "ViT_Zero_CLIP_eval")
# The backbone keys each class accepts (its constructor's arguments); `pretrained` names the CLIP
# download folder, and dropout only acts in training: both change nothing here.
_COMMON_KEYS = {"type", "input_resolution", "num_frames", "patch_size", "width", "layers", "heads"}
_TRAIN_KEYS = {"dropout_rate", "num_tadapter", "adapter_scale", "pretrained", "adapter_type",
               "mlp_ratio", "stdha_cfg", "final_ta_cfg"}  # fmt: skip
_BACKBONE_KEYS = {
    "ViT_Zero_CLIP": _COMMON_KEYS | _TRAIN_KEYS,
    "ViT_Zero_CLIP_long": _COMMON_KEYS | _TRAIN_KEYS | {"attn_adapter_type"},
    "ViT_Zero_CLIP_ablation": _COMMON_KEYS | _TRAIN_KEYS | {"attn_adapter_type"},
    "ViT_Zero_CLIP_eval": _COMMON_KEYS | {"stdha_cfg", "freeze_all"},
}
# The arguments of the steps reproduced here; any other changes what mmaction2 does.
_STEP_KEYS = {
    "SampleFrames": {"type", "clip_len", "frame_interval", "num_clips", "test_mode",
                     "twice_sample", "out_of_bound_opt", "target_fps", "temporal_jitter",
                     "keep_tail_frames"},
    "UniformSample": {"type", "clip_len", "num_clips", "test_mode"},
    "Resize": {"type", "scale", "keep_ratio", "interpolation", "lazy"},
    "CenterCrop": {"type", "crop_size", "lazy"},
    "ThreeCrop": {"type", "crop_size"},
}  # fmt: skip
# Pipeline steps that decode, pack or do nothing at test time: our decoder (PyAV) replaces them.
_DECODE_STEPS = {"DecordInit", "DecordDecode", "PyAVInit", "PyAVDecode", "OpenCVInit",
                 "OpenCVDecode", "RawFrameDecode", "FormatShape", "PackActionInputs"}  # fmt: skip


class AuthorsConfigError(ValueError):
    """A config this importer cannot read or does not reproduce; the message says which part."""


@dataclass(frozen=True)
class AuthorsConfig:
    source: str  # the file or built-in name it was read from
    model: dict
    test_pipeline: list
    ann_file_test: str | None

    @property
    def backbone(self) -> dict:
        return self.model["backbone"]

    @property
    def head(self) -> dict:
        return self.model["cls_head"]

    @property
    def dataset(self) -> str | None:
        """kinetics400, sthv2, ucf101 or hmdb51 as the test annotation file or name says."""
        where = f"{self.ann_file_test or ''} {Path(self.source).name}".lower()
        for dataset, marks in (
            ("kinetics400", ("kinetics400", "k400")),
            ("sthv2", ("sthv2", "something")),
            ("ucf101", ("ucf101",)),
            ("hmdb51", ("hmdb51",)),
        ):
            if any(mark in where for mark in marks):
                return dataset
        return None


def builtin_names() -> list[str]:
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.py"))


def read_config(source: str | Path) -> AuthorsConfig:
    """A config file, or the name of a built-in one (`CLIP-B_k400_8x16x1`, with or without .py)."""
    path = Path(source)
    if path.is_file():
        name = str(path)
    elif (BUILTIN_DIR / f"{path.stem}.py").is_file() and path.name in (
        path.stem,
        f"{path.stem}.py",
    ):
        path, name = BUILTIN_DIR / f"{path.stem}.py", path.stem
    else:
        raise AuthorsConfigError(
            f"{source}: no such config file, and not a built-in config name "
            f"({', '.join(builtin_names())})"
        )
    try:
        text = path.read_text(encoding="utf-8")
        tree = ast.parse(text, filename=name)
    except (OSError, UnicodeDecodeError, SyntaxError, ValueError) as e:
        raise AuthorsConfigError(f"{name}: not a readable Python config: {e}") from None
    except (RecursionError, MemoryError):
        raise AuthorsConfigError(f"{name}: nested too deeply to read") from None
    try:
        values = _literal_assignments(tree, text, name)
    except (RecursionError, MemoryError):
        raise AuthorsConfigError(f"{name}: nested too deeply to read") from None
    for key in ("model", "test_pipeline"):
        if key not in values:
            raise AuthorsConfigError(f"{name}: has no `{key} = ...` assignment")
    model, pipeline = values["model"], values["test_pipeline"]
    if not isinstance(model, dict) or not isinstance(model.get("backbone"), dict):
        raise AuthorsConfigError(f"{name}: `model` is not a dict with a `backbone` dict")
    if not isinstance(model.get("cls_head"), dict):
        raise AuthorsConfigError(f"{name}: `model` has no `cls_head` dict")
    if not isinstance(pipeline, list) or not all(isinstance(s, dict) for s in pipeline):
        raise AuthorsConfigError(f"{name}: `test_pipeline` is not a list of dicts")
    ann = values.get("ann_file_test")
    return AuthorsConfig(name, model, pipeline, ann if isinstance(ann, str) else None)


def _literal_assignments(tree: ast.Module, text: str, name: str) -> dict:
    nodes: dict[str, ast.expr] = {}
    for stmt in tree.body:
        targets = stmt.targets if isinstance(stmt, ast.Assign) else []
        if any(isinstance(t, ast.Name) and t.id == "_base_" for t in targets):
            raise AuthorsConfigError(
                f"{name}, line {stmt.lineno}: inherits `_base_` files, which this reader does not "
                f"follow; give a config without `_base_` (mmengine's Config.fromfile(...).dump() "
                f"writes one) or a built-in name ({', '.join(builtin_names())})"
            )
        if len(targets) == 1 and isinstance(targets[0], ast.Name) and targets[0].id in _READ:
            nodes[targets[0].id] = stmt.value
            continue
        used = _uses_model_or_pipeline(stmt)
        if used:
            raise AuthorsConfigError(
                f"{name}, line {stmt.lineno}: `{_segment(text, stmt)}` does something with "
                f"`{used}` besides naming it; the config is read as data, never run, so only its "
                f"plain `{used} = ...` counts"
            )
    values = {key: _literal(node, text, name) for key, node in nodes.items()}
    loader = _test_loader_pipeline(tree, text, name)
    if loader is not None and loader != values.get("test_pipeline"):
        raise AuthorsConfigError(
            f"{name}: test_dataloader's pipeline (which mmaction2 tests with) differs from "
            f"`test_pipeline`"
        )
    return values


def _uses_model_or_pipeline(stmt: ast.stmt) -> str | None:
    """`model` or `test_pipeline` where a statement other than their assignment does more than
    name them as a value (`pipeline=test_pipeline`): an alias, a loop, a call or an assignment
    could change them after the assignment this reader takes."""
    named = set()
    for node in ast.walk(stmt):
        values = []
        if isinstance(node, ast.keyword):
            values = [node.value]
        elif isinstance(node, (ast.List, ast.Tuple)):
            values = node.elts
        elif isinstance(node, ast.Dict):
            values = node.values
        named.update(id(v) for v in values if isinstance(v, ast.Name))
    for node in ast.walk(stmt):
        if isinstance(node, ast.Name) and node.id in _CHECKED and id(node) not in named:
            return node.id
    return None


def _test_loader_pipeline(tree: ast.Module, text: str, name: str):
    """The literal pipeline of `test_dataloader.dataset`, if the config writes one out (a
    dumped config does); None when it has none or names `test_pipeline`."""
    node = None
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "test_dataloader" for t in stmt.targets
        ):
            node = stmt.value
    for key in ("dataset", "pipeline"):
        node = _argument(node, key)
    if node is None or (isinstance(node, ast.Name) and node.id == "test_pipeline"):
        return None
    if isinstance(node, ast.Name):
        raise AuthorsConfigError(
            f"{name}: test_dataloader tests with `{node.id}`, not `test_pipeline`"
        )
    return _literal(node, text, name)


def _argument(node, key: str):
    """The value given for `key` in a dict(...) call or {...} literal node, else None."""
    if isinstance(node, ast.Call):
        return next((kw.value for kw in node.keywords if kw.arg == key), None)
    if isinstance(node, ast.Dict):
        for k, v in zip(node.keys, node.values, strict=True):
            if isinstance(k, ast.Constant) and k.value == key:
                return v
    return None


def _literal(node: ast.expr, text: str, name: str):
    """A literal expression's value: constants, lists, tuples, dicts and dict(...) calls."""
    if isinstance(node, ast.Constant) and type(node.value) in (str, int, float, bool, type(None)):
        return node.value
    if isinstance(node, ast.List):
        return [_literal(e, text, name) for e in node.elts]
    if isinstance(node, ast.Tuple):
        return tuple(_literal(e, text, name) for e in node.elts)
    if isinstance(node, ast.Dict) and all(
        isinstance(k, ast.Constant) and type(k.value) in (str, int) for k in node.keys
    ):
        return {
            _literal(k, text, name): _literal(v, text, name)
            for k, v in zip(node.keys, node.values, strict=True)
        }
    if (
        isinstance(node, ast.UnaryOp)
        and isinstance(node.op, (ast.USub, ast.UAdd))
        and isinstance(node.operand, ast.Constant)
        and type(node.operand.value) in (int, float)
    ):
        return -node.operand.value if isinstance(node.op, ast.USub) else node.operand.value
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "dict"
        and len(node.args) <= 1
        and all(kw.arg is not None for kw in node.keywords)
    ):
        out = {}
        if node.args:
            first = _literal(node.args[0], text, name)
            if not isinstance(first, dict):
                raise _not_literal(node, text, name)
            out.update(first)
        out.update({kw.arg: _literal(kw.value, text, name) for kw in node.keywords})
        return out
    raise _not_literal(node, text, name)


def _not_literal(node: ast.AST, text: str, name: str) -> AuthorsConfigError:
    return AuthorsConfigError(
        f"{name}, line {node.lineno}: `{_segment(text, node)}` is not a literal; the config is "
        f"read as data, never run: write the value itself"
    )


def _segment(text: str, node: ast.AST, limit: int = 80) -> str:
    seg = " ".join((ast.get_source_segment(text, node) or "").split())
    return seg if len(seg) <= limit else seg[: limit - 3] + "..."


# --- the model ---


def _int(d: dict, key: str, where: str, default=None) -> int:
    value = d.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise AuthorsConfigError(f"{where}.{key} must be a positive int, got {value!r}")
    return value


def tower_name(width: int, layers: int, heads: int, patch: int) -> str:
    """The open_clip model whose visual tower has this shape (CLIP's 4x MLP, 64-wide heads)."""
    import open_clip

    if (width, layers, heads, patch) in _TOWERS:
        return _TOWERS[(width, layers, heads, patch)]
    for candidate in open_clip.list_models():
        if not candidate.startswith("zeroi2v-"):
            continue
        v = open_clip.get_model_config(candidate)["vision_cfg"]
        if (v["width"], v["layers"], v["width"] // v.get("head_width", 64), v["patch_size"]) == (
            width,
            layers,
            heads,
            patch,
        ):
            return candidate
    shapes = ", ".join(f"{n} (width {w}, {d} layers, {h} heads, patch {p})"
                       for (w, d, h, p), n in _TOWERS.items())  # fmt: skip
    raise AuthorsConfigError(
        f"backbone of width {width}, {layers} layers, {heads} heads, patch {patch} is no "
        f"open_clip tower this importer knows: {shapes}"
    )


def backbone_class(cfg: AuthorsConfig) -> str:
    kind = cfg.backbone.get("type")
    if kind not in BACKBONES:
        raise AuthorsConfigError(
            f"{cfg.source}: backbone type {kind!r} is not a ZeroI2V CLIP backbone "
            f"({', '.join(BACKBONES)})"
        )
    unknown = sorted(set(cfg.backbone) - _BACKBONE_KEYS[kind])
    if unknown:
        raise AuthorsConfigError(f"{cfg.source}: {kind} takes no argument {', '.join(unknown)}")
    return kind


def temporal_offsets(cfg: AuthorsConfig) -> list[int]:
    """One Δt per head, as the backbone class's TemporalShift moves K/V channels.

    Their shift runs on K and V of shape (tokens, B*T, width): `out[:, :, s:, a:b] = feat[:, :,
    :-s, a:b]` gives channels a..b of frame t those of frame t - s (Δt = -s), and the mirrored
    slice Δt = +s; channels past the clip's ends keep their own frame's, as STDHA here does.
    Each run of channels must cover whole heads: STDHA moves heads, not channels.
    """
    kind, bb = backbone_class(cfg), cfg.backbone
    where = f"{cfg.source}: model.backbone.stdha_cfg"
    stdha = bb.get("stdha_cfg", {})
    if not isinstance(stdha, dict):
        raise AuthorsConfigError(f"{where} must be a dict")
    width, heads, frames = (_int(bb, k, "model.backbone") for k in ("width", "heads", "num_frames"))
    if stdha.get("divide_head", False):
        raise AuthorsConfigError(
            f"{where}.divide_head=True shifts within heads (their code raises)"
        )
    if stdha.get("shift_pattern", "kv") != "kv":
        raise AuthorsConfigError(
            f"{where}.shift_pattern={stdha['shift_pattern']!r}: only K and V move in STDHA "
            f"('kv'); a moved query is another model"
        )
    runs: list[tuple[int, int]] = []  # (channels, Δt), from channel 0 on

    def fold(key: str, default) -> int:
        div = stdha.get(key, default)
        if isinstance(div, bool) or not isinstance(div, (int, float)) or div <= 0:
            raise AuthorsConfigError(f"{where}.{key} must be a positive number, got {div!r}")
        return int(width // div)

    if kind == "ViT_Zero_CLIP_long":
        one = fold("shift1_div", 12)
        runs += [(one, -1), (one, +1)]
        for step, right_key in ((2, None), (3, "shift3_right"), (4, "shift4_right")):
            div = stdha.get(f"shift{step}_div", -1)
            if isinstance(div, (int, float)) and not isinstance(div, bool) and div <= 0:
                continue  # their "off" (-1)
            n = fold(f"shift{step}_div", -1)
            runs.append((n, -step))
            if right_key is None or stdha.get(right_key, False):  # shift2 always goes both ways
                runs.append((n, +step))
    else:
        if kind == "ViT_Zero_CLIP_ablation" and stdha.get("ops_type") not in (None, "stdha"):
            raise AuthorsConfigError(
                f"{where}.ops_type={stdha['ops_type']!r}: only 'stdha' is a zero-cost head "
                f"relocation ('tcs' and 'token_shift' move channels within heads or one token)"
            )
        stride = stdha.get("shift_stride", 1)
        if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
            raise AuthorsConfigError(f"{where}.shift_stride must be an int >= 1, got {stride!r}")
        one = fold("shift_div", 4 if kind == "ViT_Zero_CLIP_eval" else 12)
        runs += [(one, -stride), (one, +stride)]
        # Their eval class passes no long shift to STDHA; the others read long_shift_div, and
        # only the ablation class reads long_shift_right.
        long_div = -1 if kind == "ViT_Zero_CLIP_eval" else stdha.get("long_shift_div", -1)
        if not (
            isinstance(long_div, (int, float)) and not isinstance(long_div, bool) and long_div <= 0
        ):
            n = fold("long_shift_div", -1)
            runs.append((n, -2))
            if kind == "ViT_Zero_CLIP_ablation" and stdha.get("long_shift_right", False):
                runs.append((n, +2))
    return _heads_from_runs(runs, width, heads, frames, where)


def _heads_from_runs(
    runs: list[tuple[int, int]], width: int, heads: int, frames: int, where: str
) -> list[int]:
    if width % heads:
        raise AuthorsConfigError(f"{where}: width {width} is not a whole number of {heads} heads")
    head_dim = width // heads
    offsets = [0] * heads
    start = 0
    for channels, dt in runs:
        end = start + channels
        if end > width:
            raise AuthorsConfigError(
                f"{where}: the shifted channels end at {end}, past the width {width}"
            )
        if start % head_dim or end % head_dim:
            raise AuthorsConfigError(
                f"{where}: channels {start}..{end} (Δt {dt:+d}) are off head boundaries (heads of "
                f"{head_dim} channels); STDHA moves whole heads"
            )
        # A shift as long as the clip moves nothing in their code (every target is outside).
        for h in range(start // head_dim, end // head_dim):
            offsets[h] = dt if abs(dt) < frames else 0
        start = end
    return offsets


def adapter_layout(cfg: AuthorsConfig) -> tuple[int, float, float]:
    """(adapters per block, hidden ratio, scale) of the backbone; 0 adapters for their merged
    (eval) class."""
    kind, bb = backbone_class(cfg), cfg.backbone
    if kind == "ViT_Zero_CLIP_eval":
        return 0, 0.25, 1.0
    where = f"{cfg.source}: model.backbone"
    final = bb.get("final_ta_cfg", {})
    if not isinstance(final, dict) or final.get("use_it", False):
        raise AuthorsConfigError(f"{where}.final_ta_cfg.use_it: their code raises for it")
    adapter_type = bb.get("adapter_type", "rep" if kind == "ViT_Zero_CLIP_long" else "linear")
    if adapter_type not in ("linear", "rep"):
        raise AuthorsConfigError(
            f"{where}.adapter_type={adapter_type!r}: only linear adapters fold into the frozen "
            f"weights ('gelu' adapters have an activation, so the model is not zero-cost)"
        )
    if bb.get("num_tadapter", 1) != 2:
        raise AuthorsConfigError(
            f"{where}.num_tadapter={bb.get('num_tadapter', 1)!r}: this importer reads the "
            f"four-adapter blocks of every released model (num_tadapter=2)"
        )
    attn = bb.get("attn_adapter_type", "share")
    # Q, K and V adapters of their own exist in the ablation class only (the long one raises).
    if attn not in (("share", "qkv") if kind == "ViT_Zero_CLIP_ablation" else ("share",)):
        raise AuthorsConfigError(f"{where}.attn_adapter_type={attn!r} is not built by {kind}")
    ratio, scale = bb.get("mlp_ratio", 0.25), bb.get("adapter_scale", 0.5)
    for key, value in (("mlp_ratio", ratio), ("adapter_scale", scale)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise AuthorsConfigError(f"{where}.{key} must be a positive number, got {value!r}")
    return (6 if attn == "qkv" else 4), float(ratio), float(scale)


def zeroi2v_config(cfg: AuthorsConfig, adapters: bool = True) -> ZeroI2VConfig:
    """This project's config of the model; `adapters=False` for a checkpoint already merged by
    their tools/weight_reparam.py (no adapter tensors)."""
    bb, head = cfg.backbone, cfg.head
    dims = [_int(bb, k, "model.backbone") for k in ("width", "layers", "heads", "patch_size")]
    if head.get("type") != "I3DHead":
        raise AuthorsConfigError(f"{cfg.source}: cls_head type {head.get('type')!r}, not I3DHead")
    if head.get("spatial_type", "avg") != "avg":
        raise AuthorsConfigError(f"{cfg.source}: cls_head.spatial_type must be 'avg'")
    if head.get("must_use_fp32", False):
        raise AuthorsConfigError(f"{cfg.source}: cls_head.must_use_fp32: their head raises for it")
    if head.get("in_channels") != dims[0]:
        raise AuthorsConfigError(
            f"{cfg.source}: cls_head.in_channels {head.get('in_channels')!r} is not the backbone "
            f"width {dims[0]}"
        )
    if head.get("average_clips") != "prob":
        raise AuthorsConfigError(
            f"{cfg.source}: cls_head.average_clips={head.get('average_clips')!r}: views are "
            f"combined here as the mean of their softmaxes ('prob', as every released config)"
        )
    num_adapters, ratio, scale = adapter_layout(cfg)
    try:
        return _zeroi2v_config(cfg, dims, num_adapters if adapters else 0, ratio, scale)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors())
        raise AuthorsConfigError(
            f"{cfg.source}: not a model this project builds: {problems}"
        ) from None


def _zeroi2v_config(cfg, dims, num_adapters, ratio, scale) -> ZeroI2VConfig:
    bb, head = cfg.backbone, cfg.head
    dropout = head.get("dropout_ratio", 0.5)
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)):
        raise AuthorsConfigError(f"{cfg.source}: cls_head.dropout_ratio {dropout!r} is no number")
    return ZeroI2VConfig(
        backbone=tower_name(*dims),
        num_frames=_int(bb, "num_frames", "model.backbone"),
        image_size=_int(bb, "input_resolution", "model.backbone"),
        num_classes=_int(head, "num_classes", "model.cls_head"),
        temporal_offsets=temporal_offsets(cfg),
        num_adapters=num_adapters,
        adapter_ratio=ratio,
        adapter_scale=scale,
        head_dropout=float(dropout),
        temporal_embedding=True,
        temporal_embedding_place="before_ln_pre",
        train_ln_post=True,  # their training tunes it: an adapter file carries it
    )


# --- the test protocol ---


def preprocess_of(cfg: AuthorsConfig) -> dict:
    """The checkpoint's `preprocess` metadata: the config's test views, mmaction2's way
    (video/views.py protocol "mmaction2"), and the test pipeline itself for the record."""
    where = f"{cfg.source}: test_pipeline"
    frames = _int(cfg.backbone, "num_frames", "model.backbone")
    size = _int(cfg.backbone, "input_resolution", "model.backbone")
    steps = [s for s in cfg.test_pipeline if s.get("type") not in _DECODE_STEPS]
    steps = [s for s in steps if not (s.get("type") == "Flip" and s.get("flip_ratio", 0.5) == 0)]
    kinds = [s.get("type") for s in steps]
    if len(steps) != 3 or kinds[0] not in ("SampleFrames", "UniformSample") or kinds[1] != "Resize":
        raise AuthorsConfigError(
            f"{where} is {kinds}; this importer reproduces SampleFrames or UniformSample, then "
            f"Resize, then CenterCrop or ThreeCrop"
        )
    for step in steps:
        extra = sorted(set(step) - _STEP_KEYS.get(step["type"], set(step)))
        if extra:
            raise AuthorsConfigError(
                f"{where}: {step['type']} argument(s) {', '.join(extra)} are not reproduced here"
            )
    shapes = [s for s in cfg.test_pipeline if s.get("type") == "FormatShape"]
    if any(s.get("input_format", "NCHW") != "NCTHW" for s in shapes):
        raise AuthorsConfigError(f"{where}: FormatShape must make clips, input_format='NCTHW'")
    sample, resize, crop = steps
    out = _sampling(sample, frames, where)
    scale = resize.get("scale")
    if (
        not isinstance(scale, (list, tuple))
        or not all(type(v) is int for v in scale)
        or sorted(scale) != [-1, size]
        or not resize.get("keep_ratio", True)
        or resize.get("interpolation", "bilinear") != "bilinear"
        or resize.get("lazy", False)
    ):
        raise AuthorsConfigError(
            f"{where}: Resize {resize} is not a bilinear resize of the short side to the model's "
            f"input size, scale=(-1, {size})"
        )
    if crop.get("type") not in ("CenterCrop", "ThreeCrop"):
        raise AuthorsConfigError(f"{where}: {crop.get('type')!r} is not CenterCrop or ThreeCrop")
    crop_size = crop.get("crop_size")
    if crop_size not in (size, [size, size], (size, size)) or crop.get("lazy", False):
        raise AuthorsConfigError(
            f"{where}: {crop['type']} crop_size {crop_size!r} is not the model's input size {size}"
        )
    mean, std = _normalisation(cfg)
    return {
        **out,
        "num_frames": frames,
        "image_size": size,
        "spatial_crops": 1 if crop["type"] == "CenterCrop" else 3,
        "mean": [m / 255 for m in mean],
        "std": [s / 255 for s in std],
        "protocol": "mmaction2",
        "average_clips": "prob",
        "test_pipeline": cfg.test_pipeline,
    }


def _sampling(step: dict, frames: int, where: str) -> dict:
    kind = step["type"]
    if step.get("clip_len") != frames:
        raise AuthorsConfigError(
            f"{where}: {kind} clip_len {step.get('clip_len')!r} is not the model's {frames} frames"
        )
    if step.get("test_mode") is not True:
        raise AuthorsConfigError(f"{where}: {kind} needs test_mode=True (test-time sampling)")
    clips = _int(step, "num_clips", where, 1)
    if kind == "UniformSample":
        return {"sampling": "uniform", "temporal_clips": clips}
    extras = {
        "twice_sample": False,
        "out_of_bound_opt": "loop",
        "target_fps": None,
        "temporal_jitter": False,
        "keep_tail_frames": False,
    }
    for key, default in extras.items():
        if step.get(key, default) != default:
            raise AuthorsConfigError(f"{where}: SampleFrames {key}={step[key]!r} is not supported")
    interval = _int(step, "frame_interval", where, 1)
    return {"sampling": "dense", "frame_interval": interval, "temporal_clips": clips}


def _normalisation(cfg: AuthorsConfig) -> tuple[list[float], list[float]]:
    pre = cfg.model.get("data_preprocessor", {})
    where = f"{cfg.source}: model.data_preprocessor"
    if not isinstance(pre, dict):
        raise AuthorsConfigError(f"{where} must be a dict with mean and std")
    if pre.get("to_rgb", False) or pre.get("format_shape", "NCTHW") != "NCTHW":
        raise AuthorsConfigError(f"{where}: only RGB frames in NCTHW are reproduced")
    values = []
    for key in ("mean", "std"):
        v = pre.get(key)
        ok = isinstance(v, (list, tuple)) and len(v) == 3
        if not ok or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
            raise AuthorsConfigError(f"{where}.{key} must be 3 numbers (0-255 scale), got {v!r}")
        values.append([float(x) for x in v])
    if min(values[1]) <= 0:
        raise AuthorsConfigError(f"{where}.std must be positive")
    return values[0], values[1]


def class_names(cfg: AuthorsConfig, num_classes: int, labels: Path | None) -> list[str]:
    """Names from `labels` (one per line), else the shipped label map of the config's dataset
    (Kinetics-400, Something-Something v2), else the class indices."""
    path = labels if labels is not None else LABEL_MAPS.get(cfg.dataset or "")
    if path is None:
        return [str(i) for i in range(num_classes)]
    try:
        names = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as e:
        raise AuthorsConfigError(f"{path}: cannot read the label map: {e}") from None
    while names and not names[-1]:
        names.pop()
    if len(names) != num_classes or not all(names):
        raise AuthorsConfigError(
            f"{path}: {len(names)} labels{' (some empty)' if not all(names) else ''}; the model "
            f"has {num_classes} classes"
        )
    return names
