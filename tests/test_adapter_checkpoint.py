"""Adapter checkpoints: the trained tensors over a base backbone, merged at load time."""

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from model import CheckpointError, build_model, load_merged, read_info
from model.backbone import create_visual, read_pretrained, read_visual_state, tensors_sha256
from model.checkpoint import load_adapters, save_adapters
from tests.helpers import TINY, randomize_adapters, tiny_config, tiny_model_config
from training.checkpoint import TrainCheckpointError
from training.config import load_config
from training.export import ExportError, export_adapters, export_merged
from training.train import TrainingError, train


def write_base(path: Path, seed: int) -> Path:
    """A pre-trained base for the tiny backbone: a random visual tower, saved like open_clip's."""
    torch.manual_seed(seed)
    state = create_visual(TINY, 32).state_dict()
    save_file({f"visual.{k}": v.contiguous() for k, v in state.items()}, str(path))
    return path


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return write_base(tmp_path_factory.mktemp("base") / "tiny_base.safetensors", seed=11)


@pytest.fixture(scope="module")
def run_on_base(synth_dir, base, tmp_path_factory) -> Path:
    """A finished one-epoch training run whose frozen backbone is `base`."""
    out = tmp_path_factory.mktemp("adapters") / "run"
    train(load_config(tiny_config(synth_dir, out, epochs=1), [f"model.pretrained={base}"]))
    return out


def outputs(model, seed: int = 0) -> torch.Tensor:
    cfg = model.cfg
    x = torch.randn(2, 3, cfg.num_frames, cfg.image_size, cfg.image_size,
                    generator=torch.Generator().manual_seed(seed))  # fmt: skip
    with torch.inference_mode():
        return model(x)


def test_round_trip_equals_the_merge_made_directly(run_on_base, base, tmp_path):
    direct, _ = export_merged(run_on_base / "last.pt", tmp_path / "direct.safetensors")
    adapters = export_adapters(run_on_base / "last.pt", tmp_path / "run.adapters.safetensors")
    via, _ = export_merged(adapters, tmp_path / "via.safetensors")

    info = read_info(adapters)
    assert info.is_adapters and info.class_names == read_info(direct).class_names
    assert info.preprocess == read_info(direct).preprocess
    assert info.base.pretrained == str(base) and info.base.backbone == TINY
    assert info.base.sha256 == tensors_sha256(read_visual_state(base))
    assert adapters.stat().st_size < direct.stat().st_size / 2  # the backbone is not in it

    reference = outputs(load_merged(direct))
    assert torch.equal(outputs(load_merged(via)), reference)
    assert torch.equal(outputs(load_merged(adapters)), reference)  # merged at load time


def test_fp16_storage_is_half_the_size_and_predicts_alike(run_on_base, tmp_path):
    full = export_adapters(run_on_base / "last.pt", tmp_path / "a32.safetensors")
    half = export_adapters(run_on_base / "last.pt", tmp_path / "a16.safetensors", storage="fp16")
    assert half.stat().st_size < 0.6 * full.stat().st_size
    with safe_open(str(half), "pt") as f:
        assert f.metadata()["storage"] == "fp16"
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}  # noqa: SIM118
    a, b = outputs(load_merged(full)), outputs(load_merged(half))
    assert torch.equal(a.argmax(-1), b.argmax(-1))
    torch.testing.assert_close(b, a, atol=2e-3, rtol=2e-3)


def test_detection_models_get_adapter_checkpoints(base, tmp_path):
    cfg = tiny_model_config(task="detect", num_classes=5, pretrained=str(base))
    model = build_model(cfg).eval()
    randomize_adapters(model)
    path = save_adapters(model, tmp_path / "det.safetensors", read_pretrained(TINY, str(base)))
    loaded = load_adapters(path)
    x = torch.randn(1, 3, 4, 32, 32)
    boxes = [torch.tensor([[0.1, 0.2, 0.7, 0.9]])]
    with torch.inference_mode():
        for got, want in zip(loaded(x, boxes), model(x, boxes), strict=True):
            torch.testing.assert_close(got, want, atol=0, rtol=0)
        merged = load_merged(path)
        for got, want in zip(merged(x, boxes), model(x, boxes), strict=True):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


# ---- bad files and bad bases: each a precise error ----


@pytest.fixture(scope="module")
def adapters(run_on_base, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("adapter_file") / "run.adapters.safetensors"
    return export_adapters(run_on_base / "last.pt", out)


def rewrite(src: Path, dst: Path, tensors=None, **metadata) -> Path:
    with safe_open(str(src), "pt") as f:
        meta = {**f.metadata(), **metadata}
    save_file(load_file(str(src)) if tensors is None else tensors, str(dst), metadata=meta)
    return dst


def test_a_base_with_other_weights_is_refused_naming_both_hashes(adapters, tmp_path):
    other = write_base(tmp_path / "other.safetensors", seed=12)
    recorded = read_info(adapters).base.sha256
    found = tensors_sha256(read_visual_state(other))
    with pytest.raises(CheckpointError, match="not the backbone these adapters were") as e:
        load_merged(adapters, base=str(other))
    assert recorded in str(e.value) and found in str(e.value)


def test_the_same_weights_in_another_file_format_are_accepted(adapters, base, tmp_path):
    """The hash is over the tensors, not the file's bytes."""
    as_torch = tmp_path / "base.pt"
    torch.save(load_file(str(base)), as_torch)
    torch.testing.assert_close(
        outputs(load_merged(adapters, base=str(as_torch))), outputs(load_merged(adapters))
    )


def test_missing_base_weights(adapters, tmp_path):
    moved = rewrite(adapters, tmp_path / "moved.safetensors",
                    base=json.dumps({**json.loads(_meta(adapters)["base"]),
                                     "pretrained": "/gone/base.safetensors"}))  # fmt: skip
    with pytest.raises(CheckpointError, match=r"cannot read its base weights.*--base"):
        load_merged(moved)
    with pytest.raises(CheckpointError, match="neither a file nor a pretrained tag"):
        load_merged(adapters, base="no-such-tag")


def test_truncated_file(adapters, tmp_path):
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(adapters.read_bytes()[: adapters.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_merged(cut)


def test_wrong_shapes_missing_and_unexpected_tensors(adapters, tmp_path):
    cfg = json.loads(_meta(adapters)["config"])
    wider = rewrite(adapters, tmp_path / "wider.safetensors",
                    config=json.dumps({**cfg, "adapter_ratio": 0.5}))  # fmt: skip
    with pytest.raises(CheckpointError, match="wrong tensor shapes"):
        load_merged(wider)
    tensors = load_file(str(adapters))
    head = next(k for k in tensors if k.startswith("head."))
    fewer = rewrite(adapters, tmp_path / "fewer.safetensors",
                    {k: v for k, v in tensors.items() if k != head})  # fmt: skip
    with pytest.raises(CheckpointError, match=f"missing \\['{head}'\\]"):
        load_merged(fewer)
    more = rewrite(adapters, tmp_path / "more.safetensors", {**tensors, "extra": torch.zeros(2)})
    with pytest.raises(CheckpointError, match="unexpected \\['extra'\\]"):
        load_merged(more)


def test_bad_base_metadata(adapters, tmp_path):
    with pytest.raises(CheckpointError, match="invalid metadata"):
        read_info(rewrite(adapters, tmp_path / "b.safetensors", base="{}"))


def test_a_random_backbone_has_no_base_to_export_adapters_over(trained_run, tmp_path):
    with pytest.raises(ExportError, match="randomly initialised"):
        export_adapters(trained_run / "last.pt", tmp_path / "x.safetensors")


def test_a_training_checkpoint_takes_no_base(run_on_base, base, tmp_path):
    with pytest.raises(ExportError, match="drop --base"):
        export_merged(run_on_base / "last.pt", tmp_path / "m.safetensors", base=str(base))


def _meta(path: Path) -> dict:
    with safe_open(str(path), "pt") as f:
        return f.metadata()


def test_the_model_runner_merges_adapters_onto_a_named_base(adapters, base, tmp_path):
    from service.model_runner import ModelRunner

    renamed = tmp_path / "renamed_base.safetensors"
    renamed.write_bytes(base.read_bytes())
    runner = ModelRunner(str(adapters), precision="fp32", base=str(renamed))
    assert runner.info.is_adapters and not any("adapter" in k for k in runner.model.state_dict())
    torch.testing.assert_close(outputs(runner.model), outputs(load_merged(adapters)))


def test_quick_gelu_is_recorded_in_both_formats(base, tmp_path):
    """An OpenAI tag builds QuickGELU; the weights do not say so, so both files record it."""
    import dataclasses

    from model import merge_adapters, save_merged
    from model.backbone import uses_quick_gelu

    weights = dataclasses.replace(read_pretrained(TINY, str(base)), quick_gelu=True)
    model = build_model(tiny_model_config(pretrained=str(base)), weights=weights).eval()
    randomize_adapters(model)
    assert uses_quick_gelu(model.backbone)
    adapters = save_adapters(model, tmp_path / "qg.adapters.safetensors", weights)
    merged = save_merged(merge_adapters(model), tmp_path / "qg.safetensors")
    for path in (adapters, merged):
        loaded = load_merged(path)
        assert uses_quick_gelu(loaded.backbone), path
        torch.testing.assert_close(outputs(loaded), outputs(model), atol=1e-5, rtol=1e-5)


def test_a_base_that_is_not_a_state_dict_of_tensors(adapters, tmp_path):
    wrapped = tmp_path / "last_like.pt"
    torch.save({"model": load_file(str(adapters)), "epoch": 3}, wrapped)
    with pytest.raises(CheckpointError, match=r"not a state dict of tensors: \['model', 'epoch'\]"):
        load_merged(adapters, base=str(wrapped))


def test_non_float_non_finite_and_inconsistent_metadata_are_refused(adapters, tmp_path):
    tensors = load_file(str(adapters))
    key = next(iter(tensors))
    ints = rewrite(adapters, tmp_path / "i.safetensors", {**tensors, key: tensors[key].long()})
    with pytest.raises(CheckpointError, match="not floating point"):
        load_merged(ints)
    nan = tensors[key].clone()
    nan.view(-1)[0] = float("nan")
    with pytest.raises(CheckpointError, match="NaN or infinite"):
        load_merged(rewrite(adapters, tmp_path / "n.safetensors", {**tensors, key: nan}))
    base = json.loads(_meta(adapters)["base"])
    for bad, message in [
        ({**base, "pretrained": None}, "base.pretrained is not a non-empty string"),
        ({**base, "backbone": "ViT-B-16"}, "base backbone 'ViT-B-16' is not the config's"),
    ]:
        with pytest.raises(CheckpointError, match=message):
            read_info(rewrite(adapters, tmp_path / "b.safetensors", base=json.dumps(bad)))
    with pytest.raises(CheckpointError, match="preprocess is not a JSON object"):
        read_info(rewrite(adapters, tmp_path / "p.safetensors", preprocess="[1]"))


def test_the_hash_is_over_float32_values(base, tmp_path):
    """fp16 weights and the same weights widened to fp32 (what the model loads) agree."""
    half = {k: v.half() for k, v in load_file(str(base)).items()}
    widened = {k: v.float() for k, v in half.items()}
    assert tensors_sha256(half) == tensors_sha256(widened) != tensors_sha256(load_file(str(base)))


def test_a_base_changed_since_training_is_refused_at_export_and_resume(synth_dir, tmp_path):
    base = write_base(tmp_path / "base.safetensors", seed=21)
    config = tiny_config(synth_dir, tmp_path / "run", epochs=1)
    train(load_config(config, [f"model.pretrained={base}"]))
    write_base(base, seed=22)  # the same file name, other weights
    with pytest.raises(TrainCheckpointError, match="changed since the run was trained"):
        export_adapters(tmp_path / "run" / "last.pt", tmp_path / "a.safetensors")
    with pytest.raises(TrainCheckpointError, match="changed since the run was trained"):
        export_merged(tmp_path / "run" / "last.pt", tmp_path / "m.safetensors")
    with pytest.raises(TrainingError, match="trained on other base weights"):
        train(load_config(config, [f"model.pretrained={base}", "train.epochs=2"]), resume=True)


def test_merge_reads_the_format_from_the_content_not_the_name(adapters, tmp_path):
    renamed = tmp_path / "adapters.bin"
    renamed.write_bytes(adapters.read_bytes())
    path, _ = export_merged(renamed, tmp_path / "m.safetensors")
    assert torch.equal(outputs(load_merged(path)), outputs(load_merged(adapters)))
