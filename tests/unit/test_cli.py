"""The CLI in-process: every bad input of the foundation issue is one line, exit 2, and
nothing already written is touched; validate prints the resolved plan."""

import os

import pytest
import torch
import yaml
from click.testing import CliRunner

from rayprof.affinity import available_cores
from rayprof.cli import main


@pytest.fixture()
def runner():
    return CliRunner()


@pytest.fixture()
def existing_run(tmp_path):
    """An output root that already holds a run: bad input must leave it as it was."""
    root = tmp_path / "out"
    d = root / "run=old-1" / "worker=w"
    d.mkdir(parents=True)
    (d / "part-w-0-000000.parquet").write_bytes(b"PAR1 pretend")
    (root / "run=old-1" / "_manifest.json").write_text("{}")
    return root


def snapshot(root):
    return sorted((p.relative_to(root).as_posix(), p.read_bytes()) for p in root.rglob("*") if p.is_file())


def one_line_error(result, *needles):
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: ") and "Traceback" not in result.output
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def bad_core() -> str:
    return str(max(available_cores()) + 64)


def run_args(video, out, *extra):
    return ["run", "--model-name", "mobilenet_v3_small", "--input_path", str(video), "--batch-size", "2",
            "--max-steps", "2", "--warmup-steps", "1", "--output", str(out), *extra]


CASES = {
    "missing video": (lambda v, t: ["--input_path", str(t / "nope.mp4")], ["--input_path", "nope.mp4"]),
    "not a video": (lambda v, t: ["--input_path", str(_text_file(t))], ["--input_path", "notes.mp4", "not a video"]),
    "unknown model": (lambda v, t: ["--model-name", "resnet51"], ["--model-name = 'resnet51'", "resnet50"]),
    "unknown prep level": (lambda v, t: ["--prep-level", "extreme"], ["--prep-level = 'extreme'", "simple"]),
    "batch size 0": (lambda v, t: ["--batch-size", "0"], ["--batch-size = 0", "1 or more"]),
    "batch size negative": (lambda v, t: ["--batch-size", "-4"], ["--batch-size = -4"]),
    "max steps negative": (lambda v, t: ["--max-steps", "-1"], ["--max-steps = -1", "0 or more"]),
    "core the machine lacks": (lambda v, t: ["--core-bind", bad_core()], ["--core-bind", bad_core()]),
    "bad core syntax": (lambda v, t: ["--core-bind", "3-1"], ["--core-bind = '3-1'"]),
    "weights path missing": (lambda v, t: ["--weights", str(t / "w.pth")], ["--weights", "w.pth"]),
    "unknown weights name": (lambda v, t: ["--weights", "IMAGENET9K_V9"], ["--weights = 'IMAGENET9K_V9'"]),
}


def _text_file(tmp_path):
    p = tmp_path / "notes.mp4"
    p.write_text("this is not a video\n" * 50)
    return p


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_run_input(case, runner, small_video, tmp_path, existing_run):
    extra, needles = CASES[case]
    before = snapshot(existing_run)
    args = run_args(small_video, existing_run) + extra(small_video, tmp_path)
    one_line_error(runner.invoke(main, args), *needles)
    assert snapshot(existing_run) == before


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
@pytest.mark.parametrize("flag, field", [("--infer-on-gpu", "--infer-on-gpu = 'cuda'"), ("--prep-on-gpu", "--prep-on-gpu = 'cuda'")])
def test_gpu_requested_without_one(flag, field, runner, small_video, tmp_path):
    line = one_line_error(runner.invoke(main, run_args(small_video, tmp_path / "o", flag)), field, "cuda")
    assert "cpu" in line.lower()  # says how to run on CPU
    assert not (tmp_path / "o").exists()


def write_spec(tmp_path, video, **worker):
    spec = {"run": "v", "output": str(tmp_path / "runs"),
            "defaults": {"source": str(video), "model": "mobilenet_v3_small", "max_steps": 3, "warmup_steps": 1},
            "workers": [{"name": "a", **worker}, {"name": "b", "replicas": 2, "batch_size": 2, "cores": "all"}]}
    p = tmp_path / "job.yaml"
    p.write_text(yaml.safe_dump(spec))
    return p


def test_validate_prints_the_plan(runner, small_video, tmp_path):
    res = runner.invoke(main, ["validate", str(write_spec(tmp_path, small_video)), "--set", "workers.a.batch_size=5"])
    assert res.exit_code == 0, res.output
    out = res.output
    for col in ("actor", "worker", "source", "model", "mode", "batch", "prep", "exec", "cores"):
        assert col in out
    lines = [line for line in out.splitlines() if line.lstrip().startswith(("a-0 ", "b-0 ", "b-1 "))]
    assert len(lines) == 3 and "5" in lines[0].split() and "simple@cpu" in lines[0]
    assert "spec OK" in out
    assert not (tmp_path / "runs").exists()  # validate starts nothing, writes nothing


@pytest.mark.parametrize(
    "worker, needles",
    [
        ({"modle": "resnet18"}, ["workers[0].modle", "did you mean"]),
        ({"batch_size": "eight"}, ["workers[0].batch_size = 'eight'", "whole number"]),
        ({"model": {"name": "resnet18", "weights": "/nonexistent/r18.pth"}}, ["workers[0].model.weights"]),
        ({"cores": bad_core()}, ["workers[0].cores"]),
        ({"prep": {"level": "simple", "device": "cuda"}} if not torch.cuda.is_available() else {"prep": "nope"},
         ["workers[0].prep.device" if not torch.cuda.is_available() else "workers[0].prep.level"]),
    ],
)
def test_validate_bad_specs(worker, needles, runner, small_video, tmp_path):
    one_line_error(runner.invoke(main, ["validate", str(write_spec(tmp_path, small_video, **worker))]), *needles)


def test_missing_spec_file(runner, tmp_path):
    one_line_error(runner.invoke(main, ["validate", str(tmp_path / "nope.yaml")]), "spec", "nope.yaml")
    one_line_error(runner.invoke(main, ["submit", str(tmp_path / "nope.yaml")]), "spec", "nope.yaml")


def test_models_lists_classification_models(runner):
    res = runner.invoke(main, ["models", "--filter", "resnet"])
    assert res.exit_code == 0 and "resnet50" in res.output.split() and "fasterrcnn_resnet50_fpn" not in res.output


def test_sample_video_command(runner, tmp_path):
    res = runner.invoke(main, ["sample-video", str(tmp_path / "s.mp4"), "--seconds", "1", "--size", "96x64"])
    assert res.exit_code == 0 and os.path.getsize(res.output.strip()) > 0
    one_line_error(runner.invoke(main, ["sample-video", str(tmp_path / "t.mp4"), "--size", "big"]), "--size")


def test_every_original_flag_reaches_the_worker_spec(runner, monkeypatch, tmp_path):
    from rayprof import driver

    seen = {}
    monkeypatch.setattr(driver, "run_single", lambda spec: seen.setdefault("spec", spec) and 0)
    res = runner.invoke(main, ["run", "--model-name", "resnet50", "--input_path", "rtsp://cam/1", "--mode", "retrain",
                               "--batch-size", "16", "--prep-level", "medium", "--prep-on-gpu", "--infer-on-gpu",
                               "--core-bind", "4-7", "--enable-compile", "--use-amp", "--max-steps", "500",
                               "--warmup-steps", "7", "--weights", "none", "--num-classes", "5", "--loop",
                               "--seed", "3", "--output", str(tmp_path), "--run-name", "legacy"])
    assert res.exit_code == 0, res.output
    spec = seen["spec"]
    (w,) = spec.workers
    assert (spec.run, spec.output) == ("legacy", str(tmp_path))
    assert (w.model.name, w.source.uri, w.source.loop, w.mode, w.batch_size) == ("resnet50", "rtsp://cam/1", True,
                                                                                  "retrain", 16)
    assert (w.prep.level, w.prep.device, w.device, w.cores) == ("medium", "cuda", "cuda", "4-7")
    assert (w.model.compile, w.model.amp, w.max_steps, w.warmup_steps) == (True, True, 500, 7)
    assert (w.model.weights, w.model.num_classes, w.seed) == (None, 5, 3)


def test_the_manifest_masks_credentials_in_the_command(tmp_path, monkeypatch):
    from rayprof import driver
    from rayprof.spec import parse_fleet

    monkeypatch.setattr("sys.argv", ["rayprof", "run", "--input_path=rtsp://cam:hunter2@10.0.0.9/live",
                                     "--set", "workers.a.source=http://h/x?token=s3cret"])
    spec = parse_fleet({"run": "m", "output": str(tmp_path),
                        "workers": [{"name": "a", "model": "resnet18", "source": "rtsp://cam:hunter2@10.0.0.9/x"}]})
    driver.Manifest(tmp_path, "m-1", spec, [], mode="test")
    text = (tmp_path / "run=m-1" / "_manifest.json").read_text()
    assert "hunter2" not in text and "s3cret" not in text and "cam:***@" in text
