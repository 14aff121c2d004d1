import yaml
from typer.testing import CliRunner

from cli import app
from tests.helpers import TINY

runner = CliRunner()


def test_merge_then_info(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model": {
                    "backbone": TINY,
                    "image_size": 32,
                    "num_frames": 4,
                    "num_classes": 3,
                    "temporal_offsets": [1, -1, 0, 0],
                },
                "class_names": ["left", "right", "still"],
                "preprocess": {"temporal_clips": 3, "spatial_crops": 1},
            }
        )
    )
    out = tmp_path / "tiny.safetensors"
    result = runner.invoke(app, ["merge", str(config), "--out", str(out)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["info", str(out)])
    assert result.exit_code == 0, result.output
    assert "{+1, -1, 0x2}" in result.output
    assert "3 (left, right, still)" in result.output
    assert "(3x1 views)" in result.output


def test_merge_bad_config(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("model:\n  backbone: ViT-B-16\n  num_adapters: 5\n")
    result = runner.invoke(app, ["merge", str(config), "--out", str(tmp_path / "x.safetensors")])
    assert result.exit_code == 2
    assert "num_adapters" in result.output
    assert not (tmp_path / "x.safetensors").exists()


def test_info_bad_file(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_text("hello")
    result = runner.invoke(app, ["info", str(junk)])
    assert result.exit_code == 2 and "not a readable safetensors file" in result.output


def test_serve_says_not_yet():
    result = runner.invoke(app, ["serve"])
    assert result.exit_code == 1 and "not built yet" in result.output
