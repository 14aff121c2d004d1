"""The `zeroi2v` command line, end to end on a real (tiny) training run."""

import json

from typer.testing import CliRunner

from cli import app

runner = CliRunner()


def test_merge_info_predict_eval(trained_run, synth_dir, tmp_path):
    out = tmp_path / "tiny.safetensors"
    result = runner.invoke(app, ["merge", str(trained_run / "last.pt"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "max |logit diff|" in result.output

    result = runner.invoke(app, ["info", str(out)])
    assert result.exit_code == 0, result.output
    assert "{+1, -1, 0x2}" in result.output
    assert "8 (moving_right, moving_left" in result.output
    assert "(2x1 views)" in result.output  # the run's test-time views travel in the checkpoint

    video = next((synth_dir / "videos").rglob("*.mp4"))
    result = runner.invoke(app, ["predict", str(video), "--model", str(out), "--top-k", "3"])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 3
    scores = [float(line.split()[0]) for line in lines]
    assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1.0001

    config = trained_run.parent / f"{trained_run.name}.yaml"
    for checkpoint in (out, trained_run / "last.pt"):  # merged and unmerged give the same
        result = runner.invoke(
            app, ["eval", str(config), "--checkpoint", str(checkpoint), "--crops", "3",
                  "--precision", "fp32", "--out", str(tmp_path / checkpoint.suffix[1:])],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
    merged = json.loads((tmp_path / "safetensors" / "eval_val.json").read_text())
    unmerged = json.loads((tmp_path / "pt" / "eval_val.json").read_text())
    val_videos = len((synth_dir / "val.txt").read_text().splitlines())
    assert merged["videos"] == unmerged["videos"] == val_videos
    assert merged["confusion"] == unmerged["confusion"]
    assert (tmp_path / "pt" / "eval_val_confusion.png").exists()


def test_predict_and_eval_in_bf16_and_a_bad_precision(trained_run, synth_dir, tmp_path):
    out = tmp_path / "tiny.safetensors"
    assert (
        runner.invoke(app, ["merge", str(trained_run / "last.pt"), "-o", str(out)]).exit_code == 0
    )
    video = next((synth_dir / "videos").rglob("*.mp4"))
    answers = {}
    for precision in ("fp32", "bf16"):
        result = runner.invoke(
            app, ["predict", str(video), "-m", str(out), "--precision", precision]
        )
        assert result.exit_code == 0, result.output
        lines = [line.split() for line in result.output.strip().splitlines()]
        answers[precision] = {name: float(score) for score, name in lines}
    for name in answers["bf16"].keys() & answers["fp32"].keys():  # near-ties may reorder
        assert abs(answers["bf16"][name] - answers["fp32"][name]) < 0.02
    result = runner.invoke(app, ["predict", str(video), "-m", str(out), "--precision", "int8"])
    assert result.exit_code == 2 and "unknown precision 'int8'" in result.output
    config = trained_run.parent / f"{trained_run.name}.yaml"
    result = runner.invoke(
        app, ["eval", str(config), "--checkpoint", str(out), "--precision", "fp8"]
    )  # fmt: skip
    assert result.exit_code == 2 and "unknown precision 'fp8'" in result.output


def test_predict_bad_video(trained_run, tmp_path):
    out = tmp_path / "m.safetensors"
    assert (
        runner.invoke(app, ["merge", str(trained_run / "last.pt"), "-o", str(out)]).exit_code == 0
    )
    junk = tmp_path / "clip.mp4"
    junk.write_bytes(b"\x00" * 1000)
    result = runner.invoke(app, ["predict", str(junk), "--model", str(out)])
    assert result.exit_code == 2 and "clip.mp4" in result.output


def test_merge_rejects_a_non_checkpoint(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("model:\n  backbone: ViT-B-16\n")
    result = runner.invoke(app, ["merge", str(config), "--out", str(tmp_path / "x.safetensors")])
    assert result.exit_code == 2
    assert "not a readable training checkpoint" in result.output
    assert not (tmp_path / "x.safetensors").exists()


def test_train_bad_config(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("model:\n  num_adapters: 5\ndata:\n  root: x\n  train: a\n  val: b\n")
    result = runner.invoke(app, ["train", str(config)])
    assert result.exit_code == 2 and "model.num_adapters" in result.output


def test_info_bad_file(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_text("hello")
    result = runner.invoke(app, ["info", str(junk)])
    assert result.exit_code == 2 and "not a readable safetensors file" in result.output


def test_serve_rejects_a_bad_model(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 100)
    result = runner.invoke(app, ["serve", "--model", str(junk)])
    assert result.exit_code == 2 and "not a readable safetensors file" in result.output


def test_demo_model_is_built_once_then_cached(synth_dir, tmp_path, monkeypatch):
    """The `zeroi2v serve` default, on a tiny recipe: trained, merged, cached by recipe."""
    import training.demo as demo
    from model import read_info
    from tests.helpers import tiny_config

    monkeypatch.setattr(demo, "CONFIG", tiny_config(synth_dir, tmp_path / "unused", epochs=1))
    monkeypatch.setattr(demo, "DATA", {"num_videos_per_class": 7, "num_frames": 8, "size": 32})
    monkeypatch.setattr(demo, "OVERRIDES", [])
    path = demo.demo_model(tmp_path / "cache")
    assert read_info(path).class_names[:2] == ["moving_right", "moving_left"]
    built = path.stat().st_mtime_ns
    assert demo.demo_model(tmp_path / "cache") == path and path.stat().st_mtime_ns == built
