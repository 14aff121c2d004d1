"""Compute the reference outputs of tests/data/authors/ with the ZeroI2V authors' own code.

Their code never enters this project: this script loads it from a checkout given on the
command line (github:MCG-NJU/ZeroI2V, read at f091983), copied into a temporary package, with
stand-ins for what it imports but does not use here (mmengine's logger and registry, mmcv's
DropPath, the `clip` downloader). It needs einops, which the project does not depend on:

    uv pip install --target /tmp/refdeps einops
    PYTHONPATH=/tmp/refdeps .venv/bin/python -m tests.data.make_authors_reference \
        --repo /path/to/ZeroI2V

For each case it builds their backbone from the case's config, fills it with the seeded tensors
of tests/authors_fixtures.py, runs their forward on a seeded input and applies their I3DHead's
test-time computation (average pool over time, dropout off, fc_cls; transcribed below, as their
head class needs all of mmengine), and writes the config text and a JSON with the seed, the
tensor shapes and the logits. For the `merged` cases it first folds the adapters with their
tools/weight_reparam.py and runs their ViT_Zero_CLIP_eval. Commit what it writes; do not
regenerate to make a test pass.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import json
import logging
import math
import re
import shutil
import sys
import tempfile
import types
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from tests.authors_fixtures import BUILTIN, DATA, VIEWS, authors_tensors

TINY_K400 = """model = dict(
    type='Recognizer3D',
    backbone=dict(type='{cls}', pretrained='your_clip_path', input_resolution=32, patch_size=8,
                  num_frames=8, width=64, layers=2, heads=4, adapter_scale=0.5, num_tadapter=2,
                  {extra}),
    cls_head=dict(type='I3DHead', in_channels=64, num_classes=5, spatial_type='avg',
                  dropout_ratio=0.5, average_clips='prob'),
    data_preprocessor=dict(type='ActionDataPreprocessor', mean=[122.769, 116.74, 104.04],
                           std=[68.493, 66.63, 70.321], format_shape='NCTHW'))
ann_file_test = 'data/tiny/tiny_val_list_videos.txt'
test_pipeline = [
    dict(type='DecordInit'),
    dict(type='SampleFrames', clip_len=8, frame_interval=2, num_clips=2, test_mode=True),
    dict(type='DecordDecode'),
    dict(type='Resize', scale=(-1, 32)),
    dict(type='CenterCrop', crop_size=32),
    dict(type='FormatShape', input_format='NCTHW'),
    dict(type='PackActionInputs')
]
"""
TINY_LONG = """model = dict(
    type='Recognizer3D',
    backbone=dict(type='ViT_Zero_CLIP_long', pretrained='your_clip_path', input_resolution=32,
                  patch_size=16, num_frames=8, width=256, layers=6, heads=8, adapter_scale=1,
                  num_tadapter=2,
                  stdha_cfg=dict(divide_head=False, shift1_div=8, shift2_div=8, shift3_div=8,
                                 shift3_right=True, shift4_div=-1, shift4_right=False)),
    cls_head=dict(type='I3DHead', in_channels=256, num_classes=7, spatial_type='avg',
                  dropout_ratio=0.5, label_smooth_eps=0.1, average_clips='prob'),
    data_preprocessor=dict(type='ActionDataPreprocessor', mean=[122.769, 116.74, 104.04],
                           std=[68.493, 66.63, 70.321], format_shape='NCTHW'))
ann_file_test = 'data/tiny_uniform/val_list_videos.txt'
test_pipeline = [
    dict(type='DecordInit'),
    dict(type='UniformSample', clip_len=8, test_mode=True),
    dict(type='DecordDecode'),
    dict(type='Resize', scale=(-1, 32)),
    dict(type='ThreeCrop', crop_size=32),
    dict(type='FormatShape', input_format='NCTHW'),
    dict(type='PackActionInputs')
]
"""
# name: (config text, seed, fp16 checkpoint, merged by their reparam tool)
CASES = {
    "tiny_clip": (
        TINY_K400.format(cls="ViT_Zero_CLIP",
                         extra="stdha_cfg=dict(shift_div=4, divide_head=False, long_shift_div=4)"),
        1, False, False),
    "tiny_ablation_qkv": (
        TINY_K400.format(cls="ViT_Zero_CLIP_ablation",
                         extra="attn_adapter_type='qkv', dropout_rate=0, stdha_cfg=dict("
                         "shift_div=4, divide_head=False, long_shift_div=4, "
                         "long_shift_right=True)"),
        2, True, False),
    "tiny_long": (TINY_LONG, 3, False, False),
    "tiny_merged": (
        TINY_K400.format(cls="ViT_Zero_CLIP", extra="stdha_cfg=dict(shift_div=4, shift_stride=2)"),
        4, False, True),
}  # fmt: skip
# The released configs and B/16 SSv2 16 frames, with a small input (2 x 2 patches).
REAL = {
    "CLIP-B_k400_8x16x1": (32, 11, False),
    "CLIP-L_k400_8x16x1": (28, 12, True),
    "CLIP-L_k400_32x4x1": (28, 13, False),
    "CLIP-L_sthv2_u32": (28, 14, True),
    "CLIP-B_sthv2_u16": (32, 15, False),
}


def small_input(text: str, size: int) -> str:
    text = re.sub(r"input_resolution=224", f"input_resolution={size}", text)
    text = re.sub(r"scale=\(-1, 224\)", f"scale=(-1, {size})", text)
    return re.sub(r"crop_size=224", f"crop_size={size}", text)


def _stand_ins() -> None:
    """Modules their files import for logging, registration and pretrained downloads."""

    def module(name: str, **attrs) -> None:
        m = types.ModuleType(name)
        m.__dict__.update(attrs)
        sys.modules[name] = m

    class Registry:
        def register_module(self, *a, **k):
            return lambda cls: cls

    class MMLogger:
        @staticmethod
        def get_current_instance():
            return logging.getLogger("authors")

    for name in ("mmcv", "mmcv.cnn", "mmengine", "mmengine.model", "mmaction"):
        module(name)
    module("mmcv.cnn.bricks", DropPath=torch.nn.Identity)
    module("mmengine.model.weight_init", trunc_normal_=torch.nn.init.trunc_normal_)
    module("mmengine.logging", MMLogger=MMLogger)
    module("mmaction.registry", MODELS=Registry())
    module("clip")
    if not hasattr(F, "_scaled_dot_product_attention"):  # torch < 2.1's, which their MHA calls

        def sdpa(q, k, v, attn_mask=None, dropout_p=0.0):
            attn = torch.bmm(q / math.sqrt(q.shape[-1]), k.transpose(-2, -1))
            if attn_mask is not None:
                attn = attn + attn_mask
            attn = attn.softmax(-1)
            return torch.bmm(attn, v), attn

        F._scaled_dot_product_attention = sdpa


def load_authors(repo: Path, work: Path) -> types.ModuleType:
    """Their backbones and tools as the package `authors_ref` under `work`."""
    pkg = work / "authors_ref"
    (pkg / "backbones").mkdir(parents=True)
    shutil.copytree(repo / "mmaction/models/common", pkg / "common")
    for f in (repo / "mmaction/models/backbones").glob("vit_zero_clip*.py"):
        shutil.copy(f, pkg / "backbones" / f.name)
    shutil.copy(repo / "tools/weight_reparam.py", pkg / "weight_reparam.py")
    (pkg / "__init__.py").write_text("")
    (pkg / "backbones" / "__init__.py").write_text("")
    _stand_ins()
    sys.path.insert(0, str(work))
    return importlib.import_module("authors_ref")


def backbone_of(text: str, authors) -> torch.nn.Module:
    tree = ast.parse(text)
    model = next(
        ast.literal_eval(_dicts(n.value)) for n in tree.body if getattr(n, "targets", [None])[0]
        and getattr(n.targets[0], "id", "") == "model"
    )  # fmt: skip
    kwargs = dict(model["backbone"])
    kind = kwargs.pop("type")
    kwargs.pop("pretrained", None)
    if kind == "ViT_Zero_CLIP_ablation":  # their shipped configs omit it, and None raises
        kwargs["stdha_cfg"] = {"ops_type": "stdha", **kwargs.get("stdha_cfg", {})}
    module = {
        "ViT_Zero_CLIP": "vit_zero_clip",
        "ViT_Zero_CLIP_long": "vit_zero_clip_long",
        "ViT_Zero_CLIP_ablation": "vit_zero_clip_ablation",
        "ViT_Zero_CLIP_eval": "vit_zero_clip_eval",
    }[kind]
    mod = importlib.import_module(f"authors_ref.backbones.{module}")
    return getattr(mod, kind)(**kwargs), model


def _dicts(node: ast.AST) -> ast.AST:
    """dict(a=1) calls as {'a': 1} literals, for ast.literal_eval."""

    class T(ast.NodeTransformer):
        def visit_Call(self, call):
            self.generic_visit(call)
            keys = [ast.Constant(kw.arg) for kw in call.keywords]
            return ast.Dict(keys=keys, values=[kw.value for kw in call.keywords])

    return ast.fix_missing_locations(T().visit(node))


def run_case(name: str, text: str, seed: int, fp16: bool, merged: bool, authors) -> None:
    backbone, model_cfg = backbone_of(text, authors)
    head = model_cfg["cls_head"]
    shapes = {f"backbone.{k}": list(v.shape) for k, v in backbone.state_dict().items()}
    shapes["cls_head.fc_cls.weight"] = [head["num_classes"], head["in_channels"]]
    shapes["cls_head.fc_cls.bias"] = [head["num_classes"]]
    state = authors_tensors(shapes, seed, torch.float16 if fp16 else torch.float32)
    run_text = text
    if merged:
        state = {k: v.clone() for k, v in state.items()}
        bb = model_cfg["backbone"]
        authors.weight_reparam.reparam_vit_zero_clip(
            state, scale=bb["adapter_scale"], skip_connect=True, num_tadapter=2,
            num_layers=bb["layers"])  # fmt: skip
        run_text = text.replace("type='ViT_Zero_CLIP'", "type='ViT_Zero_CLIP_eval'")
        run_text = re.sub(r"adapter_scale=[\d.]+, num_tadapter=2,\s*", "", run_text)
        run_text = run_text.replace("pretrained='your_clip_path', ", "")
        backbone, _ = backbone_of(run_text, authors)
        shapes = {k: list(v.shape) for k, v in state.items()}
    bb_state = {k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")}
    backbone.load_state_dict(bb_state, strict=True)
    backbone.eval()
    bb = model_cfg["backbone"]
    size, frames = bb["input_resolution"], bb["num_frames"]
    input_shape = [VIEWS, 3, frames, size, size]
    g = torch.Generator().manual_seed(seed + 7)
    x = torch.randn(input_shape, generator=g)
    with torch.no_grad():
        feats = backbone(x)  # (N, D, T, 1, 1) for their I3DHead
        pooled = F.adaptive_avg_pool3d(feats, 1).flatten(1)  # I3DHead: avg_pool, view
        w, b = state["cls_head.fc_cls.weight"].float(), state["cls_head.fc_cls.bias"].float()
        logits = pooled @ w.T + b  # fc_cls (dropout is off at test time)
    DATA.mkdir(parents=True, exist_ok=True)
    (DATA / f"{name}.py").write_text(text)
    if merged:  # their reparam's output is no seeded tensor: stored (tiny cases only)
        (DATA / f"{name}.eval.py").write_text(run_text)
        save_file({k: v.contiguous() for k, v in state.items()}, DATA / f"{name}.safetensors")
    record = {
        "seed": seed,
        "dtype": "fp16" if fp16 else "fp32",
        "merged": merged,
        "shapes": shapes,
        "input_shape": input_shape,
        "logits": logits.tolist(),
    }
    (DATA / f"{name}.json").write_text(json.dumps(record))
    print(f"{name}: logits {tuple(logits.shape)}, max |logit| {logits.abs().max():.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, required=True, help="a checkout of their code")
    parser.add_argument("--only", nargs="*", help="case names")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    with tempfile.TemporaryDirectory() as work:
        authors = load_authors(args.repo, Path(work))
        importlib.import_module("authors_ref.weight_reparam")
        cases = dict(CASES)
        for name, (size, seed, fp16) in REAL.items():
            cases[name] = (
                small_input((BUILTIN / f"{name}.py").read_text(), size),
                seed,
                fp16,
                False,
            )
        for name, (text, seed, fp16, merged) in cases.items():
            if not args.only or name in args.only:
                run_case(name, text, seed, fp16, merged, authors)


if __name__ == "__main__":
    main()
