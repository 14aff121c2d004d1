import json

import open_clip
import pytest
import torch
from safetensors.torch import load_file, save_file

from model import CheckpointError, build_model, load_merged, merge_adapters, read_info, save_merged
from tests.helpers import TINY, randomize_adapters


@pytest.fixture
def merged(tiny_cfg):
    model = build_model(tiny_cfg)
    randomize_adapters(model)
    return merge_adapters(model)


@pytest.fixture
def saved(merged, tmp_path):
    names = [f"class {i}" for i in range(7)]
    return save_merged(merged, tmp_path / "model.safetensors", names, {"temporal_clips": 3})


def test_round_trip(merged, saved):
    loaded = load_merged(saved)
    x = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), merged(x), atol=0, rtol=0)
    info = read_info(saved)
    assert info.class_names[1] == "class 1" and info.config == merged.cfg
    assert info.preprocess["temporal_clips"] == 3 and info.preprocess["num_frames"] == 4
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())


def test_tensor_names_are_open_clip_keys_and_load_strictly(saved):
    tensors = load_file(saved)
    backbone = {k[len("backbone.") :]: v for k, v in tensors.items() if k.startswith("backbone.")}
    visual = open_clip.create_model(TINY, force_image_size=32).visual
    assert set(backbone) == set(visual.state_dict())
    visual.load_state_dict(backbone, strict=True)
    assert set(tensors) - {f"backbone.{k}" for k in backbone} == {"head.fc.weight", "head.fc.bias"}


def test_unmerged_model_is_refused(tiny_cfg, tmp_path):
    with pytest.raises(ValueError, match="merge_adapters"):
        save_merged(build_model(tiny_cfg), tmp_path / "x.safetensors")


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        load_merged(tmp_path / "nope.safetensors")


def test_directory(tmp_path):
    with pytest.raises(CheckpointError, match="not a regular file"):
        load_merged(tmp_path)


@pytest.mark.parametrize("keep", [10, 0.5, 0.999])
def test_truncated_file(saved, tmp_path, keep):
    data = saved.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: keep if isinstance(keep, int) else int(len(data) * keep)])
    with pytest.raises(CheckpointError, match="truncated"):
        load_merged(cut)


def test_not_safetensors(tmp_path):
    junk = tmp_path / "clip.mp4"
    junk.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 100)
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_merged(junk)


def test_safetensors_without_zeroi2v_metadata(tmp_path):
    other = tmp_path / "other.safetensors"
    save_file({"weight": torch.zeros(2)}, other)
    with pytest.raises(CheckpointError, match="not a zeroi2v checkpoint"):
        load_merged(other)


def _rewrite(saved, tmp_path, **meta_updates):
    tensors = load_file(saved)
    from safetensors import safe_open

    with safe_open(saved, "pt") as f:
        meta = f.metadata()
    meta.update(meta_updates)
    out = tmp_path / "rewritten.safetensors"
    save_file(tensors, out, metadata=meta)
    return out


def test_wrong_architecture(saved, tmp_path, tiny_cfg):
    wrong = tiny_cfg.model_copy(
        update={"backbone": "zeroi2v-ViT-S-16", "image_size": 32, "temporal_offsets": None}
    )
    bad = _rewrite(saved, tmp_path, config=wrong.model_dump_json())
    with pytest.raises(CheckpointError, match="do not match zeroi2v-ViT-S-16"):
        load_merged(bad)


def test_invalid_config_metadata(saved, tmp_path):
    bad = _rewrite(saved, tmp_path, config=json.dumps({"backbone": TINY, "num_frames": -1}))
    with pytest.raises(CheckpointError, match="invalid metadata"):
        load_merged(bad)


def test_newer_format_version(saved, tmp_path):
    bad = _rewrite(saved, tmp_path, format_version="99")
    with pytest.raises(CheckpointError, match="newer than this zeroi2v"):
        read_info(bad)


def test_class_names_must_match(saved, tmp_path):
    bad = _rewrite(saved, tmp_path, class_names=json.dumps(["a", "b"]))
    with pytest.raises(CheckpointError, match="does not list 7 classes"):
        read_info(bad)


def test_temporal_embedding_round_trip(tiny_cfg, tmp_path):
    model = build_model(tiny_cfg.model_copy(update={"temporal_embedding": True}))
    with torch.no_grad():
        model.temporal_embedding.normal_()
    merged = merge_adapters(model)
    path = save_merged(merged, tmp_path / "te.safetensors")
    x = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(load_merged(path)(x), merged(x))


def test_write_atomic_keeps_the_old_file_on_failure_and_shares_the_new_one(tmp_path):
    """One writer for every checkpoint: mode from the umask (not mkstemp's 0600), no temp file
    left behind, and a failed write leaves the previous file whole."""
    import os
    import stat

    from model.checkpoint import write_atomic
    from training.checkpoint import save_atomic

    target = tmp_path / "out" / "file.bin"
    write_atomic(target, lambda tmp: tmp.write_bytes(b"old"))
    mask = os.umask(0o022)
    try:
        save_atomic({"step": 1}, tmp_path / "last.pt")
    finally:
        os.umask(mask)
    assert stat.S_IMODE((tmp_path / "last.pt").stat().st_mode) == 0o644

    def fails(tmp):
        tmp.write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(target, fails)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in target.parent.iterdir()) == ["file.bin"]


def test_frames_per_clip_have_one_home(merged, tmp_path):
    """The model config says how many frames and what size a clip is; a preprocess that says
    otherwise is refused on writing and on reading, and one that says nothing gets the config's."""
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    with pytest.raises(ValueError, match="num_frames is 16, but the model config's is 4"):
        save_merged(merged, tmp_path / "x.safetensors", preprocess={"num_frames": 16})
    path = save_merged(merged, tmp_path / "ok.safetensors")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    for preprocess, message in (({"image_size": 64}, "image_size is 64"), ({}, None)):
        bad = tmp_path / "crafted.safetensors"
        save_file(tensors, str(bad), metadata={**meta, "preprocess": json.dumps(preprocess)})
        if message:
            with pytest.raises(CheckpointError, match=message):
                read_info(bad)
        else:
            assert read_info(bad).preprocess == {"num_frames": 4, "image_size": 32}
