"""``image_annotator --workers N`` on one shared local Ray: the same JSON (and the same annotated
images) as a single process.

SSDlite is used because its CPU kernels give bit-identical results at any thread count and batch
composition, so a single process (2 threads) and actors (1 thread each) compute the same floats;
the merge itself is what is under test. (Faster R-CNN's CPU results can differ in the last bits
between thread counts.)
"""

from __future__ import annotations

import json

import pytest

ray = pytest.importorskip("ray")

from frame_extract import image_annotator as ia  # noqa: E402
from tests.support.frames import write_images  # noqa: E402


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    write_images(folder, 5, width=96, height=64)
    write_images(folder / "big", 2, width=128, height=96)   # other sizes in the same run
    for p in (folder / "big").iterdir():
        p.rename(folder / f"z_{p.name}")
    (folder / "broken.png").write_bytes(b"not really a png")  # skipped, by every worker the same way
    return folder


def run(images, out, workers, batch_size=2):
    opts = ia.validate_options(input=str(images), output=str(out), model_name="ssdlite320_mobilenet_v3_large",
                               threshold="0", weights="none", device="cpu", batch_size=batch_size,
                               workers=workers)
    facts = ia.annotate(opts, quiet=True)
    files = {p.name: p.read_bytes() for p in sorted(out.iterdir())}
    return facts, files


def test_two_workers_give_the_single_process_json_and_images(local_ray, images, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    one, one_files = run(images, tmp_path / "one", workers=1, batch_size=3)
    assert ray.is_initialized()
    two, two_files = run(images, tmp_path / "two", workers=2)
    assert ray.is_initialized()  # the tool used this Ray and left it running
    assert one["images"] == two["images"] == 7 and [s.file_name for s in one["skipped"]] == ["broken.png"]
    # untrained, SSDlite gives its 300 boxes per image the same score: their order (and so the ids)
    # rests on the fixed tie order, which the comparison below checks too
    assert 0 < one["detections"] <= 7 * 300
    assert two_files == one_files             # the JSON and every annotated image, byte for byte
    dataset = json.loads(one_files["coco_dataset.json"])
    assert [im["file_name"] for im in dataset["images"]] == sorted(im["file_name"] for im in dataset["images"])
    assert {im["width"] for im in dataset["images"]} == {96, 128}
    assert len(json.loads(one_files["coco_results.json"])) == one["detections"] == len(dataset["annotations"])
    # (how images are split over actors, and CPUs over more actors than CPUs: tests/unit/test_image_annotator.py)
