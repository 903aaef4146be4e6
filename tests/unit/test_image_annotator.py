"""The image annotator without a trained model: drawing, the threshold and the COCO conversion on
injected detections with known answers; weights resolution; the input list; every bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from frame_extract import image_annotator as ia
from frame_extract._coco import (
    Detection,
    ImageRecord,
    categories,
    category_ids,
    coco_bbox,
    coco_documents,
    keep,
    make_detection,
)
from frame_extract._detect import build_detector, hub_checkpoint, resolve_detector
from frame_extract._draw import color_of, draw_detections, label_text, style_for, text_color
from rayprof.errors import UserError
from tests.support.frames import write_images

COCO = tuple(torchvision.models.get_model_weights("fasterrcnn_resnet50_fpn_v2").DEFAULT.meta["categories"])

# -- categories, threshold, COCO -------------------------------------------------------------------


def test_categories_are_cocos_ids_without_placeholders():
    cats = categories(COCO)
    assert len(cats) == 80
    by_id = {c["id"]: c["name"] for c in cats}
    assert by_id[1] == "person" and by_id[3] == "car" and by_id[18] == "dog" and by_id[90] == "toothbrush"
    assert 0 not in by_id and 12 not in by_id and "N/A" not in by_id.values()  # 12 is a COCO gap
    assert category_ids(COCO) == frozenset(by_id)


def test_detections_are_rounded_once():
    d = make_detection([10.004, 20.005, 30.126, -0.001], 3, 0.876549)
    assert d == Detection((10.0, 20.0, 30.13, 0.0), 3, 0.8765)
    assert str(d.box[3]) == "0.0"  # no -0.0 in the JSON


def test_threshold_keeps_scores_at_or_above_and_drops_placeholder_labels():
    dets = [make_detection([0, 0, 5, 5], 1, s) for s in (0.2, 0.5, 0.49999, 0.9)]
    dets += [make_detection([1, 1, 2, 2], 12, 0.95), make_detection([1, 1, 2, 2], 0, 0.99)]  # N/A, background
    kept = keep(dets, 0.5, category_ids(COCO))
    assert [d.score for d in kept] == [0.9, 0.5, 0.5]   # 0.49999 rounds to 0.5: the threshold sees the rounded score
    assert keep(dets, 0.0, category_ids(COCO))[-1].score == 0.2 and keep(dets, 1.0, category_ids(COCO)) == []


def test_keep_orders_best_first_with_a_fixed_tie_order():
    a, b, c = (make_detection([0, 0, 1, 1], 5, 0.7), make_detection([0, 0, 1, 1], 2, 0.7),
               make_detection([0, 0, 2, 2], 2, 0.7))
    assert keep([a, c, b], 0.5, category_ids(COCO)) == keep([c, b, a], 0.5, category_ids(COCO)) == [b, c, a]


def test_coco_documents_known_answer():
    recs = [
        ImageRecord("b.png", 640, 480, (make_detection([10, 20, 110, 70], 18, 0.9),), {"frame_index": 29}),
        ImageRecord("a.png", 320, 240, (make_detection([0, 0, 50.5, 40.25], 1, 0.99),
                                        make_detection([5, 5, 15, 25], 3, 0.6))),
        ImageRecord("c.png", 100, 100, ()),
    ]
    dataset, results = coco_documents(recs, COCO, {"model": "m"})
    assert dataset["info"] == {"model": "m"} and dataset["licenses"] == []
    assert dataset["images"] == [
        {"id": 1, "file_name": "a.png", "width": 320, "height": 240},
        {"id": 2, "file_name": "b.png", "width": 640, "height": 480, "frame_index": 29},
        {"id": 3, "file_name": "c.png", "width": 100, "height": 100},
    ]
    assert dataset["annotations"] == [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0.0, 0.0, 50.5, 40.25], "area": 2032.62, "iscrowd": 0,
         "score": 0.99},
        {"id": 2, "image_id": 1, "category_id": 3, "bbox": [5.0, 5.0, 10.0, 20.0], "area": 200.0, "iscrowd": 0,
         "score": 0.6},
        {"id": 3, "image_id": 2, "category_id": 18, "bbox": [10.0, 20.0, 100.0, 50.0], "area": 5000.0, "iscrowd": 0,
         "score": 0.9},
    ]
    assert results == [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
                        "score": a["score"]} for a in dataset["annotations"]]
    assert dataset["categories"] == categories(COCO)
    # the order records arrive in (one process, or Ray shards) does not matter
    assert coco_documents(recs[::-1], COCO, {"model": "m"}) == (dataset, results)
    with pytest.raises(ValueError):
        coco_documents(recs + recs[:1], COCO)


def test_coco_bbox_width_height_are_rounded():
    assert coco_bbox((0.1, 0.2, 0.3, 0.7)) == [0.1, 0.2, 0.2, 0.5]


def test_pycocotools_reads_both_documents_and_scores_them_perfect(tmp_path):
    pytest.importorskip("pycocotools")
    from pycocotools.coco import COCO as Coco
    from pycocotools.cocoeval import COCOeval

    recs = [ImageRecord(f"{i}.png", 200, 100, (make_detection([10 + i, 10, 60 + i, 80], 1, 0.9),
                                                make_detection([100, 20, 180, 90], 3, 0.8))) for i in range(3)]
    dataset, results = coco_documents(recs, COCO)
    (tmp_path / "d.json").write_text(json.dumps(dataset))
    (tmp_path / "r.json").write_text(json.dumps(results))
    gt = Coco(str(tmp_path / "d.json"))
    dt = gt.loadRes(str(tmp_path / "r.json"))
    ev = COCOeval(gt, dt, "bbox")
    ev.evaluate(), ev.accumulate()
    assert ev.eval["precision"][0, :, 0, 0, -1].max() == pytest.approx(1.0)   # AP@0.5 for person = 1


# -- drawing -----------------------------------------------------------------------------------


def test_drawing_puts_the_box_and_a_filled_label_where_they_belong():
    img = np.full((360, 640, 3), 40, np.uint8)
    det = make_detection([100, 120, 300, 300], 1, 0.87)
    out = draw_detections(img, [det], COCO)
    assert np.array_equal(img, np.full((360, 640, 3), 40, np.uint8))   # the input is untouched
    color = np.array(color_of(1), np.uint8)
    st = style_for(360, 640)
    assert st.line == 2
    for x, y in ((200, 120), (200, 300), (100, 200), (300, 200)):        # the four edges, mid-way
        assert np.array_equal(out[y, x], color), (x, y)
    assert np.array_equal(out[200, 200], img[200, 200])                 # the inside is not filled
    # the label sits on the box's top edge, above it: a filled box of the class colour with text in it
    label = out[100:119, 100:160]
    share = (label == color).all(axis=2).mean()
    assert 0.5 < share < 0.95
    ink = np.array(text_color(color_of(1)), np.uint8)
    assert (np.abs(label.astype(int) - ink).sum(axis=2) < 60).any()      # text pixels in the text colour
    assert label_text(det, COCO) == "person 0.87"
    assert np.array_equal(out[5, 600], img[5, 600]) and np.array_equal(out[350, 600], img[350, 600])


def test_a_label_with_no_room_above_goes_inside_and_stays_in_the_image():
    img = np.zeros((64, 96, 3), np.uint8)
    out = draw_detections(img, [make_detection([80, 0, 95, 63], 62, 0.5)], COCO)   # chair, at the right edge
    color = np.array(color_of(62), np.uint8)
    assert (out[0:10, :] == color).all(axis=2).any(axis=1).all()   # the label's rows are at the top
    assert (out[0:10, 0:80] == color).all(axis=2).any()            # shifted left of the box to fit: it is wide


def test_text_scales_with_the_image():
    small, medium, large = style_for(64, 96), style_for(360, 640), style_for(1080, 1920)
    assert small.font_scale < medium.font_scale < large.font_scale and small.font_scale >= 0.35
    assert small.line == 1 < medium.line < large.line
    assert text_color((255, 255, 255)) == (0, 0, 0) and text_color((0, 0, 0)) == (255, 255, 255)


def test_best_scores_are_drawn_last_so_they_stay_readable():
    img = np.zeros((200, 200, 3), np.uint8)
    hi, lo = make_detection([20, 60, 180, 180], 1, 0.9), make_detection([20, 60, 180, 180], 3, 0.3)
    a = draw_detections(img, [hi, lo], COCO)
    b = draw_detections(img, [lo, hi], COCO)
    assert np.array_equal(a, b) and np.array_equal(a[100, 20], np.array(color_of(1), np.uint8))


# -- weights ---------------------------------------------------------------------------------


def test_auto_weights_without_a_cached_file_are_none(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    spec = resolve_detector("fasterrcnn_resnet50_fpn_v2", "auto", 0.7)
    assert spec.kind == "none" and spec.weights_label == "none" and spec.categories == COCO
    assert spec.score_kwarg == ("box_score_thresh", 0.05)


SSDLITE = "ssdlite320_mobilenet_v3_large"


@pytest.fixture(scope="module")
def reference():
    """SSDlite with random (seeded) values: the smallest detection model."""
    return build_detector(resolve_detector(SSDLITE, "none", 0.5))


def test_auto_weights_use_the_default_file_when_it_is_in_the_hub_cache(tmp_path, monkeypatch, reference):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    name = SSDLITE
    default = torchvision.models.get_model_weights(name).DEFAULT
    path = hub_checkpoint(default.url)
    assert path == tmp_path / "hub" / "checkpoints" / Path(default.url).name
    path.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), path)          # stands in for the downloaded file
    spec = resolve_detector(name, "auto", 0.5)
    assert (spec.kind, spec.weights, spec.cached, spec.cache_path) == ("torchvision", "COCO_V1", True, str(path))
    model = build_detector(spec)                       # torchvision loads it from the cache: no download
    x = torch.rand(3, 64, 96, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        assert torch.equal(model([x])[0]["scores"], reference([x])[0]["scores"])


def test_a_weights_file_loads_and_one_for_another_model_is_a_user_error(tmp_path, reference):
    name = SSDLITE
    good = tmp_path / "good.pth"
    torch.save({"model": reference.state_dict()}, good)
    model = build_detector(resolve_detector(name, str(good), 0.5))
    for a, b in zip(model.state_dict().values(), reference.state_dict().values()):
        assert torch.equal(a, b)
    other = tmp_path / "other.pth"
    state = dict(reference.state_dict())
    state["head.classification_head.module_list.0.1.weight"] = torch.zeros(10, 128, 1, 1)  # another class count
    state["extra.key"] = torch.zeros(1)
    torch.save(state, other)
    with pytest.raises(UserError) as e:
        build_detector(resolve_detector(name, str(other), 0.5))
    assert e.value.field == "weights" and "does not fit ssdlite320_mobilenet_v3_large" in e.value.message
    assert "1 key(s) unexpected, e.g. 'extra.key'" in e.value.message and "1 key(s) of another shape" in e.value.message
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="is not a state dict torch can load"):
        build_detector(resolve_detector(name, str(junk), 0.5))


def test_the_score_cutoff_of_the_model_follows_a_low_threshold():
    assert resolve_detector("retinanet_resnet50_fpn", "none", 0.01).score_kwarg == ("score_thresh", 0.01)
    assert resolve_detector("fcos_resnet50_fpn", "none", 0.9).score_kwarg == ("score_thresh", 0.2)
    keypoints = resolve_detector("keypointrcnn_resnet50_fpn", "none", 0.5).categories
    assert keypoints == ("no person", "person") and categories(keypoints) == [{"id": 1, "name": "person"}]


# -- the Ray fan-out's plan (the runs themselves are in tests/ray/test_annotator_ray.py) -------------


def test_shards_are_contiguous_near_equal_and_never_empty():
    from frame_extract._fanout import shards

    assert shards(list(range(7)), 3) == [[0, 1, 2], [3, 4], [5, 6]]
    assert shards(list(range(2)), 5) == [[0], [1]]
    assert shards(list(range(4)), 1) == [[0, 1, 2, 3]]


def test_actors_share_cpus_when_there_are_more_actors_than_cpus():
    from frame_extract._fanout import actor_resources

    assert actor_resources(2, 0, 2, "cpu") == ({"num_cpus": 1.0}, 1)
    assert actor_resources(2, 0, 3, "auto") == ({"num_cpus": 2 / 3}, 1)    # schedulable: 3 x 2/3 <= 2
    assert actor_resources(16, 0, 4, "cpu") == ({"num_cpus": 1.0}, 4)
    assert actor_resources(16, 2, 4, "cuda") == ({"num_cpus": 1.0, "num_gpus": 0.5}, 4)
    assert actor_resources(16, 2, 4, "cpu") == ({"num_cpus": 1.0}, 4)


# -- the input list ----------------------------------------------------------------------------


def opts_for(tmp_path, input_, **kw):
    return ia.validate_options(input=str(input_), output=str(tmp_path / "out"), device="cpu", **kw)


def test_a_folder_gives_its_images_sorted_and_skips_other_files(tmp_path):
    write_images(tmp_path / "in", 3)
    (tmp_path / "in" / "notes.txt").write_text("x")
    (tmp_path / "in" / ".hidden.png").write_bytes(b"")
    jobs = ia.collect_jobs(opts_for(tmp_path, tmp_path / "in"))
    assert [j.file_name for j in jobs] == ["img_000.png", "img_001.png", "img_002.png"]
    assert all(Path(j.target).parent == tmp_path / "out" for j in jobs)


def test_an_extractor_index_gives_frame_index_and_timestamp(tmp_path):
    write_images(tmp_path / "f", 2)
    (tmp_path / "f" / "index.csv").write_text("file_name,frame_index,timestamp_s,output_index,output_time_s\n"
                                              "img_001.png,89,2.966667,1,2.0\nimg_000.png,29,0.966667,0,0.0\n")
    jobs = ia.collect_jobs(opts_for(tmp_path, tmp_path / "f" / "index.csv"))
    assert [(j.file_name, dict(j.extra)) for j in jobs] == [
        ("img_000.png", {"frame_index": 29, "timestamp_s": 0.966667}),
        ("img_001.png", {"frame_index": 89, "timestamp_s": 2.966667})]
    (tmp_path / "f" / "index.json").write_text(json.dumps({"frames": [{"file_name": "img_000.png", "frame_index": 3,
                                                                       "timestamp_s": 0.1}]}))
    (job,) = ia.collect_jobs(opts_for(tmp_path, tmp_path / "f" / "index.json"))
    assert dict(job.extra) == {"frame_index": 3, "timestamp_s": 0.1}


# -- bad input: one line, exit 2, nothing written ---------------------------------------------------


def run_main(args, capsys):
    with pytest.raises(SystemExit) as e:
        ia.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return e.value.code, out, err


BAD = {
    "missing input": (["-i", "{tmp}/nope"], "input = '{tmp}/nope': does not exist"),
    "empty folder": (["-i", "{tmp}/empty"], "input = '{tmp}/empty': has no images"),
    "not images": (["-i", "{tmp}/in/notes.txt"], "is neither a folder, an image nor an extractor index"),
    "index without file_name": (["-i", "{tmp}/in/bad.csv"], "has no file_name column"),
    "index escaping its folder": (["-i", "{tmp}/in/up.csv"], "lists '../x.png', which is not a plain relative"),
    "index with missing files": (["-i", "{tmp}/in/gone.csv"], "lists 1 image(s) that do not exist"),
    "index bad json": (["-i", "{tmp}/in/bad.json"], "is not valid JSON"),
    "unknown model": (["--model_name", "fasterrcnn_resnet51_fpn"],
                      "model_name = 'fasterrcnn_resnet51_fpn': not a torchvision detection model (did you mean"),
    "classification model": (["--model-name", "resnet50"], "is a classification model, not a detection model"),
    "threshold above 1": (["--threshold", "1.5"], "threshold = '1.5': must be at most 1"),
    "threshold below 0": (["--threshold", "-0.1"], "threshold = '-0.1': must be at least 0"),
    "threshold text": (["--threshold", "high"], "threshold = 'high': not a number"),
    "weights file missing": (["--weights", "{tmp}/w.pth"], "weights = '{tmp}/w.pth': no such weights file"),
    "weights name unknown": (["--weights", "COCO_V3"], "weights = 'COCO_V3': no such weights for"),
    "weights of another model": (["--weights", "ResNet50_Weights.IMAGENET1K_V1"], "are not weights for"),
    "weights that do not fit": (["--weights", "{tmp}/other.pth"], "does not fit"),
    "batch size": (["--batch-size", "0"], "batch_size = '0': must be at least 1"),
    "workers": (["--workers", "1.5"], "workers = '1.5': not a whole number"),
    "device": (["--device", "tpu"], "device = 'tpu': not a device"),
    "output is a file": (["-o", "{tmp}/in/notes.txt"], "is a file, not a folder"),
    "output is the input": (["-o", "{tmp}/in"], "is where the input images are"),
    "unknown flag": (["--treshold", "0.5"], "No such option '--treshold'"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, tmp_path, capsys):
    write_images(tmp_path / "in", 2)
    (tmp_path / "empty").mkdir()
    (tmp_path / "in" / "notes.txt").write_text("x")
    (tmp_path / "in" / "bad.csv").write_text("name\nimg_000.png\n")
    (tmp_path / "in" / "up.csv").write_text("file_name\n../x.png\n")
    (tmp_path / "in" / "gone.csv").write_text("file_name\nimg_000.png\nimg_999.png\n")
    (tmp_path / "in" / "bad.json").write_text("{")
    torch.save({"x": torch.zeros(1)}, tmp_path / "other.pth")
    before = sorted(p.name for p in (tmp_path / "in").iterdir())
    extra, expected = BAD[case]
    fill = {"tmp": str(tmp_path)}
    extra = [a.format(**fill) for a in extra]
    args = {"-i": str(tmp_path / "in"), "-o": str(tmp_path / "out")}
    for flag in ("-i", "-o"):
        if flag in extra:
            k = extra.index(flag)
            args[flag] = extra[k + 1]
            del extra[k:k + 2]
    code, out, err = run_main(["-i", args["-i"], "-o", args["-o"], "--model_name", "ssdlite320_mobilenet_v3_large",
                               "--device", "cpu", *extra], capsys)
    assert code == 2, err
    assert out == "" and err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
    assert expected.format(**fill) in err
    assert not (tmp_path / "out").exists() and sorted(p.name for p in (tmp_path / "in").iterdir()) == before


def test_cuda_without_a_gpu_is_a_user_error(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    write_images(tmp_path / "in", 1)
    code, _, err = run_main(["-i", tmp_path / "in", "-o", tmp_path / "out", "--device", "cuda"], capsys)
    assert code == 2 and err.startswith("error: device = 'cuda': no CUDA GPU is available") and err.count("\n") == 1
