"""Both tools as a user runs them (subprocesses), on videos and images generated here.

The extractor is compared with ffmpeg's own ``fps`` filter on the same files: a constant 30 fps
video, the same re-timed to 29.97 (30000/1001) fps, and a variable-frame-rate one (intervals of
10–70 ms in a 1 ms time base). ffmpeg is asked which input frame each output frame shows
(``showinfo`` before and after the filter, matched by checksum); the extractor must write the same
number of frames with the same timestamps, within one source frame.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

from frame_extract import frame_extractor as fx
from tests.support.frames import (
    REPO,
    cfr_video,
    ffmpeg_fps_choice,
    ffmpeg_frames,
    ntsc_video,
    tool,
    vfr_video,
    write_images,
)
from tests.support.media import HttpStreamServer


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("videos")
    cfr = cfr_video(d / "cfr30.mp4", seconds=10, fps=30)
    return {"cfr30": cfr, "ntsc": ntsc_video(cfr, d / "ntsc.mp4"), "vfr": vfr_video(cfr, d / "vfr.mkv")}


def read_index(folder: Path, prefix: str = "frame_") -> list[dict]:
    with open(folder / f"{prefix}index.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def source_intervals(video: Path, input_opts: tuple[str, ...]) -> list[float]:
    """Each decoded frame's timestamp, as ffmpeg sees it (after ``input_opts``)."""
    return [f.pts_time for f in ffmpeg_frames(video, input_opts=input_opts)]


CASES = [(v, fps, ()) for v in ("cfr30", "ntsc", "vfr") for fps in ("0.5", "3", "30000/1001", "45")] + [
    ("cfr30", "0.5", ("-ss", "2.5", "-to", "7.3")),
    ("ntsc", "2", ("-ss", "2.51", "-to", "8.99")),
    ("vfr", "3", ("-ss", "1.234", "-to", "6.5")),
]


@pytest.mark.parametrize("name, fps, input_opts", CASES, ids=[f"{v}-fps{f.replace('/', '_')}{'-cut' if o else ''}"
                                                               for v, f, o in CASES])
def test_the_extractor_chooses_what_ffmpegs_fps_filter_chooses(videos, name, fps, input_opts, tmp_path):
    video = videos[name]
    theirs = ffmpeg_fps_choice(video, fps, input_opts=input_opts)
    cut = dict(zip(input_opts[::2], input_opts[1::2]))
    args = ["-i", str(video), "-o", str(tmp_path), "--fps", fps, "--format", "png"]
    if "-ss" in cut:
        args += ["--start", cut["-ss"], "--end", cut["-to"]]
    with pytest.raises(SystemExit) as done:   # in this process: the commands' start-up is tested below
        fx.main(args)
    assert done.value.code == 0
    start = float(cut.get("-ss", 0))
    ours = [float(r["timestamp_s"]) - start for r in read_index(tmp_path)]
    assert len(ours) == len(theirs), (ours, theirs)
    times = source_intervals(video, input_opts)
    for k, (a, b) in enumerate(zip(ours, (c.pts_time for c in theirs))):
        j = min(range(len(times)), key=lambda i: abs(times[i] - b))
        one_frame = max(times[min(j + 1, len(times) - 1)] - times[j], times[j] - times[max(j - 1, 0)])
        assert abs(a - b) <= one_frame + 1e-6, f"output {k}: ours {a:.4f} s, ffmpeg {b:.4f} s"


def test_the_readme_example_exact_frames(videos, tmp_path):
    """`--fps 0.5` on 30 fps: ffmpeg shows frames 29, 89, 149, 209, 269 — and so does the extractor."""
    theirs = [c.n for c in ffmpeg_fps_choice(videos["cfr30"], "0.5")]
    res = tool("frame_extractor", "-i", str(videos["cfr30"]), "-o", str(tmp_path), "--fps", "0.5",
               "--prefix", "shot_", "--format", "png")
    assert res.returncode == 0 and res.stderr == "", res.stderr
    rows = read_index(tmp_path, "shot_")
    assert [int(r["frame_index"]) for r in rows] == theirs == [29, 89, 149, 209, 269]
    assert res.stdout.startswith("extracted 5 frame(s) at 0.5 fps as png from ") and res.stdout.count("\n") == 1
    # the PNGs are the decoded frames themselves
    cap = cv2.VideoCapture(str(videos["cfr30"]))
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f)
    for r in rows:
        assert (cv2.imread(str(tmp_path / r["file_name"])) == frames[int(r["frame_index"])]).all()


def test_the_original_script_style_command_and_the_example_script(videos, tmp_path):
    env = {**os.environ, "PYTHONPATH": "", "PYTHON": sys.executable}
    res = subprocess.run([sys.executable, "frame_extract/frame_extractor.py", "-i", str(videos["ntsc"]), "-o",
                          str(tmp_path / "a"), "--fps", "0.5", "--prefix", "shot_", "--format", "png"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stderr
    assert len(read_index(tmp_path / "a", "shot_")) == 5
    res = subprocess.run(["bash", str(REPO / "frame_extract" / "frame_extractor.sh"), str(videos["vfr"]),
                          str(tmp_path / "b")], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
                         check=False)
    assert res.returncode == 0, res.stderr
    assert len(read_index(tmp_path / "b", "shot_")) == 6  # 11.98 s at 0.5 fps


def test_a_live_http_stream_for_a_bounded_time(videos, tmp_path):
    with HttpStreamServer(videos["cfr30"], tmp_path, fmt="mpegts") as server:
        url = server.url.replace("http://", "http://cam:s3cret@")
        res = tool("frame_extractor", "-i", url, "-o", str(tmp_path / "live"), "--fps", "2", "--max-duration", "1.5",
                   "--index", "json", timeout=120)
    assert res.returncode == 0, res.stderr
    doc = json.loads((tmp_path / "live" / "frame_index.json").read_text())
    assert doc["stopped_by"] == "max_duration" and doc["source"] == server.url.replace("http://", "http://cam:***@")
    assert len(doc["frames"]) == 3   # ticks 0, 1, 2 of a 2 fps clock over 1.5 s of stream time
    assert "s3cret" not in res.stdout + res.stderr + (tmp_path / "live" / "frame_index.json").read_text()


def test_extractor_bad_input_in_a_subprocess(tmp_path):
    res = tool("frame_extractor", "-i", str(tmp_path / "missing.mp4"), "-o", str(tmp_path / "o"))
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("error: input = ") and "no such file" in res.stderr
    res = tool("frame_extractor", "-i", str(tmp_path / "missing.mp4"), "-o", str(tmp_path / "o"), "--fps", "0")
    assert res.returncode == 2 and res.stderr.startswith("error: fps = '0': must be greater than 0")
    assert not (tmp_path / "o").exists()


# -- the annotator -------------------------------------------------------------------------------


def check_coco(dataset: dict, results: list, folder: Path) -> None:
    """What pycocotools relies on, checked by hand."""
    assert set(dataset) >= {"images", "annotations", "categories"}
    image_ids = [im["id"] for im in dataset["images"]]
    assert image_ids == list(range(1, len(image_ids) + 1))
    assert [im["file_name"] for im in dataset["images"]] == sorted(im["file_name"] for im in dataset["images"])
    cat_ids = {c["id"] for c in dataset["categories"]}
    sizes = {im["id"]: (im["width"], im["height"]) for im in dataset["images"]}
    for im in dataset["images"]:
        assert cv2.imread(str(folder / im["file_name"])).shape[:2] == (im["height"], im["width"])
    assert [a["id"] for a in dataset["annotations"]] == list(range(1, len(dataset["annotations"]) + 1))
    for a in dataset["annotations"]:
        x, y, w, h = a["bbox"]
        W, H = sizes[a["image_id"]]
        assert a["category_id"] in cat_ids and a["iscrowd"] == 0 and 0 <= a["score"] <= 1
        assert 0 <= x and 0 <= y and w >= 0 and h >= 0 and x + w <= W + 0.01 and y + h <= H + 0.01
        assert a["area"] == pytest.approx(w * h, abs=0.01)
    assert results == [{k: a[k] for k in ("image_id", "category_id", "bbox", "score")} for a in dataset["annotations"]]


def test_extract_then_annotate_an_index_end_to_end(videos, tmp_path):
    frames = tmp_path / "frames"
    assert tool("frame_extractor", "-i", str(videos["cfr30"]), "-o", str(frames), "--fps", "0.3", "--format",
                "png").returncode == 0
    res = tool("image_annotator", "-i", str(frames / "frame_index.csv"), "-o", str(tmp_path / "ann"),
               "--model_name", "ssdlite320_mobilenet_v3_large", "--threshold", "0", "--device", "cpu",
               "--batch-size", "2", env={"TORCH_HOME": str(tmp_path / "torch")})
    assert res.returncode == 0, res.stderr
    assert res.stderr.startswith("warning: weights: none — ssdlite320_mobilenet_v3_large has random values, its "
                                 "boxes and labels are meaningless") and res.stderr.count("\n") == 1
    assert res.stdout.startswith("annotated 3 image(s) with ssdlite320_mobilenet_v3_large (weights none) on cpu: ")
    dataset = json.loads((tmp_path / "ann" / "coco_dataset.json").read_text())
    results = json.loads((tmp_path / "ann" / "coco_results.json").read_text())
    check_coco(dataset, results, tmp_path / "ann")
    assert [(im["frame_index"], im["timestamp_s"]) for im in dataset["images"]] == [
        (int(r["frame_index"]), float(r["timestamp_s"])) for r in read_index(frames)]
    assert dataset["annotations"] and dataset["info"]["weights"] == "none"
    for im in dataset["images"]:   # annotated copies: the same size, with something drawn on them
        a, b = cv2.imread(str(frames / im["file_name"])), cv2.imread(str(tmp_path / "ann" / im["file_name"]))
        assert a.shape == b.shape and (a != b).any()


def test_annotate_a_folder_with_faster_rcnn_and_the_example_script(tmp_path):
    write_images(tmp_path / "in", 2, ext="jpg")
    env = {"TORCH_HOME": str(tmp_path / "torch"), "PYTHON": sys.executable,
           "MODEL": "fasterrcnn_mobilenet_v3_large_320_fpn", "WEIGHTS": "none"}
    res = subprocess.run(["bash", str(REPO / "frame_extract" / "image_annotator.sh"), str(tmp_path / "in"),
                          str(tmp_path / "out")], cwd=tmp_path, env={**os.environ, **env, "PYTHONPATH": str(REPO)},
                         capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stderr
    assert "fasterrcnn_mobilenet_v3_large_320_fpn (weights none)" in res.stdout
    dataset = json.loads((tmp_path / "out" / "coco_dataset.json").read_text())
    check_coco(dataset, json.loads((tmp_path / "out" / "coco_results.json").read_text()), tmp_path / "out")
    assert [im["file_name"] for im in dataset["images"]] == ["img_000.jpg", "img_001.jpg"]
    assert dataset["info"]["threshold"] == 0.7


def test_annotator_bad_input_in_a_subprocess(tmp_path):
    # (every bad input is in tests/unit/test_image_annotator.py; here: the real process, no traceback)
    write_images(tmp_path / "in", 1)
    res = tool("image_annotator", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "o"), "--model_name", "yolo")
    assert res.returncode == 2 and res.stdout == "" and res.stderr.count("\n") == 1
    assert res.stderr.startswith("error: model_name = 'yolo': not a torchvision detection model")
    assert not (tmp_path / "o").exists()
