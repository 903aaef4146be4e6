"""Label images with a torchvision detection model: annotated copies and COCO JSON.

    python -m frame_extract.image_annotator -i output_frames -o annotated_frames \\
        --model_name fasterrcnn_resnet50_fpn_v2 --threshold 0.7

``-i`` is a folder of images, one image, or an index the frame extractor wrote. ``-o`` receives
an annotated copy of every image (boxes, class names and scores), ``coco_dataset.json`` (images,
annotations with ``[x, y, w, h]`` boxes, categories from the weights' metadata) and
``coco_results.json`` (the detections in COCO's results format). ``--workers N`` fans the images
out over N Ray actors; the JSON is the same as one process writes. Bad input is one line on
stderr and exit code 2; see ``frame_extract/README.md``.
"""

from __future__ import annotations

if __package__ in (None, ""):  # python frame_extract/image_annotator.py (the original tool's way)
    import os.path
    import sys

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import csv
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import click

from frame_extract._common import (
    EXIT_INTERRUPTED,
    Progress,
    make_folder,
    one_line,
    parse_number,
    run_cli,
    warn,
    write_atomic,
)
from frame_extract._work import IMAGE_EXTS, ImageJob, Skipped, WorkSettings
from rayprof.errors import UserError, check_output_folder

DEFAULT_MODEL = "fasterrcnn_resnet50_fpn_v2"
DATASET_JSON = "coco_dataset.json"
RESULTS_JSON = "coco_results.json"
_IMAGES_FIX = "give a folder of images (.png, .jpg, .webp, …), one image, or an index the frame extractor wrote"


@dataclass(frozen=True)
class AnnotateOptions:
    """Validated options (see :func:`validate_options`)."""

    input: Path
    output: Path
    model_name: str = DEFAULT_MODEL
    threshold: float = 0.5
    weights: str = "auto"
    device: str = "auto"
    batch_size: int = 4
    workers: int = 1


def validate_options(*, input: str, output: str, model_name: str = DEFAULT_MODEL, threshold: str | float = 0.5,
                     weights: str = "auto", device: str = "auto", batch_size: str | int = 4,
                     workers: str | int = 1) -> AnnotateOptions:
    """The command line's values → :class:`AnnotateOptions`, or the first :class:`UserError`.
    Cheap checks only: nothing is loaded, opened or written."""
    if not str(input).strip():
        raise UserError("input", input, "is empty", _IMAGES_FIX)
    th = parse_number("threshold", threshold, minimum=0, maximum=1,
                      fix="use a score between 0 and 1, e.g. 0.5 (boxes scoring at least this are kept)")
    bs = parse_number("batch_size", batch_size, minimum=1, integer=True, fix="use 1 or more images per batch")
    nw = parse_number("workers", workers, minimum=1, integer=True,
                      fix="use 1 (this process) or the number of Ray actors to fan out to")
    from rayprof.model import check_device

    check_device(str(device), "device", fix="use --device cpu (or auto: a GPU when there is one)")
    out = check_output_folder("output", output)
    return AnnotateOptions(input=Path(input).expanduser(), output=out, model_name=str(model_name).strip(),
                           threshold=th, weights=str(weights).strip() or "auto", device=str(device).strip(),
                           batch_size=bs, workers=nw)


# -- what to annotate ------------------------------------------------------------------------


def _safe_relative(field: str, index: Path, name: str) -> PurePosixPath:
    rel = PurePosixPath(str(name).replace("\\", "/"))
    if not str(name).strip() or rel.is_absolute() or ".." in rel.parts:
        raise UserError(field, str(index), f"lists {name!r}, which is not a plain relative file name",
                        "give an index whose file names are relative to its folder (as the extractor writes them)")
    return rel


def _index_rows(path: Path) -> list[dict]:
    """The rows of an extractor index (CSV with a ``file_name`` column, or its JSON)."""
    fix = "give an index the frame extractor wrote (<prefix>index.csv or .json), a folder or an image"
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError("input", str(path), f"cannot be read ({getattr(e, 'strerror', None) or e})", fix) from None
    if path.suffix.lower() == ".json":
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError("input", str(path), f"is not valid JSON (line {e.lineno})", fix) from None
        rows = doc.get("frames") if isinstance(doc, dict) else None
        if not isinstance(rows, list) or not all(isinstance(r, dict) and "file_name" in r for r in rows):
            raise UserError("input", str(path), "has no 'frames' list with a file_name per frame", fix)
        return rows
    reader = csv.DictReader(text.splitlines())
    if not reader.fieldnames or "file_name" not in reader.fieldnames:
        raise UserError("input", str(path), "has no file_name column", fix)
    return list(reader)


def _number(value):
    try:
        f = float(value)
    except (TypeError, ValueError):
        return value
    return int(f) if f.is_integer() and "." not in str(value) else f


def collect_jobs(opts: AnnotateOptions) -> list[ImageJob]:
    """The images to annotate, sorted by name, each with its output path inside ``--output``."""
    src = opts.input
    shown = str(src)
    if not src.exists():
        where = "" if src.is_absolute() else f" (relative to {Path.cwd()})"
        raise UserError("input", shown, f"does not exist{where}", _IMAGES_FIX)
    entries: list[tuple[Path, PurePosixPath, dict]] = []
    if src.is_dir():
        for p in sorted(src.iterdir()):
            if p.is_file() and p.suffix.lower() in IMAGE_EXTS and not p.name.startswith("."):
                entries.append((p, PurePosixPath(p.name), {}))
        if not entries:
            raise UserError("input", shown, "has no images (" + ", ".join(IMAGE_EXTS) + ")", _IMAGES_FIX)
    elif src.suffix.lower() in (".csv", ".json"):
        base = src.parent
        for row in _index_rows(src):
            rel = _safe_relative("input", src, row["file_name"])
            extra = {k: _number(row[k]) for k in ("frame_index", "timestamp_s") if k in row}
            entries.append((base / rel, rel, extra))
        if not entries:
            raise UserError("input", shown, "lists no frames", "run the extractor again, or annotate a folder")
        missing = [str(rel) for p, rel, _ in entries if not p.is_file()]
        if missing:
            raise UserError("input", shown, f"lists {len(missing)} image(s) that do not exist (e.g. {missing[0]!r})",
                            "run the extractor again, or annotate the folder instead of the index")
    elif src.suffix.lower() in IMAGE_EXTS:
        entries.append((src, PurePosixPath(src.name), {}))
    else:
        raise UserError("input", shown, "is neither a folder, an image nor an extractor index", _IMAGES_FIX)
    names = [str(rel) for _, rel, _ in entries]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise UserError("input", shown, f"lists {dup!r} twice", "give an index with each file once")
    jobs = []
    for p, rel, extra in sorted(entries, key=lambda e: str(e[1])):
        target = opts.output / Path(*rel.parts)
        if target.resolve() == p.resolve():
            raise UserError("output", str(opts.output), "is where the input images are: the annotated copies "
                            "would replace them", "give another folder for --output")
        jobs.append(ImageJob(str(p), str(target), str(rel), extra))
    return jobs


# -- the run ---------------------------------------------------------------------------------


def annotate(opts: AnnotateOptions, *, quiet: bool = False) -> dict:
    """Check everything, build the model, annotate, write the JSON. Returns the summary facts.
    ``quiet``: no model line and no weights warning on stderr (for callers that report themselves).

    Every :class:`UserError` is raised before anything is written."""
    from frame_extract._coco import coco_documents
    from frame_extract._detect import build_detector, resolve_detector
    from rayprof.model import resolve_device

    spec = resolve_detector(opts.model_name, opts.weights, opts.threshold)
    jobs = collect_jobs(opts)
    say = (lambda _m: None) if quiet else (lambda m: print(one_line(m), file=sys.stderr, flush=True))
    if spec.kind == "torchvision" and not spec.cached:
        say(f"downloading the {spec.weights} weights of {spec.name} once, into {spec.cache_path}")
    model = build_detector(spec)
    device = resolve_device(opts.device)
    if spec.kind == "none" and not quiet:
        import torch

        warn(f"weights: none — {spec.name} has random values, its boxes and labels are meaningless; "
             f"use --weights DEFAULT (downloaded once into {Path(torch.hub.get_dir()) / 'checkpoints'}) "
             "or --weights /path/to/weights.pth (see frame_extract/README.md)")
    else:
        origin = f"file {spec.weights}" if spec.kind == "file" else (
            f"torchvision, from {spec.cache_path}" if spec.cache_path else "torchvision")
        say(f"model: {spec.name}, weights {spec.weights_label} ({origin}), on {device}")
    make_folder("output", opts.output)
    settings = WorkSettings(threshold=opts.threshold, categories=spec.categories)
    started = time.monotonic()
    outcomes: list = []
    interrupted = False
    with Progress(f"annotating {len(jobs)} image(s)", len(jobs)) as progress:
        try:
            if opts.workers > 1 and len(jobs) > 1:
                from frame_extract._fanout import annotate_with_ray

                done = [0]

                def on_batch(n: int) -> None:
                    done[0] += n
                    progress.advance(n, f"{done[0]} done")

                outcomes = annotate_with_ray(jobs, model, settings, device=opts.device, workers=opts.workers,
                                             batch_size=opts.batch_size, on_batch=on_batch)
            else:
                from frame_extract._work import process_batch

                model = model.to(device)
                for start in range(0, len(jobs), opts.batch_size):
                    outcomes.extend(process_batch(model, jobs[start:start + opts.batch_size], settings, device))
                    progress.advance(len(jobs[start:start + opts.batch_size]), f"{len(outcomes)} done")
        except KeyboardInterrupt:
            interrupted = True
    records = [o for o in outcomes if not isinstance(o, Skipped)]
    skipped = [o for o in outcomes if isinstance(o, Skipped)]
    info = {"description": f"detections of {spec.name}", "tool": "frame_extract.image_annotator",
            "model": spec.name, "weights": spec.weights_label, "threshold": opts.threshold}
    dataset, results = coco_documents(records, spec.categories, info)
    for name, doc in ((DATASET_JSON, dataset), (RESULTS_JSON, results)):  # compact, as COCO's own files
        write_atomic(opts.output / name, (json.dumps(doc, separators=(",", ":")) + "\n").encode("utf-8"))
    return {"images": len(records), "skipped": skipped, "detections": len(results),
            "categories": len({r["category_id"] for r in results}), "interrupted": interrupted,
            "total": len(jobs), "elapsed_s": time.monotonic() - started, "device": str(device), "spec": spec}


def run(opts: AnnotateOptions) -> int:
    facts = annotate(opts)
    spec = facts["spec"]
    for s in facts["skipped"][:3]:
        warn(f"skipped {s.file_name}: {s.reason}")
    if len(facts["skipped"]) > 3:
        warn(f"skipped {len(facts['skipped']) - 3} more image(s) that could not be read")
    done = f"{facts['images']} of {facts['total']}" if facts["interrupted"] else str(facts["images"])
    print(f"annotated {done} image(s) with {spec.name} (weights {spec.weights_label}) on {facts['device']}"
          f"{f' with {opts.workers} Ray workers' if opts.workers > 1 and facts['total'] > 1 else ''}: "
          f"{facts['detections']} box(es) scoring ≥ {opts.threshold:g} in {facts['categories']} categor"
          f"{'y' if facts['categories'] == 1 else 'ies'}, in {facts['elapsed_s']:.1f} s"
          f"{' (interrupted)' if facts['interrupted'] else ''}; wrote {opts.output}/ (annotated copies), "
          f"{DATASET_JSON} and {RESULTS_JSON}", flush=True)
    return EXIT_INTERRUPTED if facts["interrupted"] else 0


# -- the command -------------------------------------------------------------------------------


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("-i", "--input", "input_", required=True, metavar="FOLDER|IMAGE|INDEX",
              help="A folder of images, one image, or an index the frame extractor wrote (<prefix>index.csv/.json).")
@click.option("-o", "--output", required=True, metavar="FOLDER",
              help="Where the annotated copies and the COCO JSON files go (created if missing).")
@click.option("--model_name", "--model-name", "model_name", default=DEFAULT_MODEL, show_default=True,
              help="Any torchvision detection model: fasterrcnn_resnet50_fpn(_v2), fasterrcnn_mobilenet_v3_large_fpn, "
                   "retinanet_resnet50_fpn(_v2), fcos_resnet50_fpn, ssd300_vgg16, ssdlite320_mobilenet_v3_large, "
                   "maskrcnn_resnet50_fpn(_v2), keypointrcnn_resnet50_fpn.")
@click.option("--threshold", default="0.5", show_default=True, metavar="0-1", help="Keep boxes scoring at least this.")
@click.option("--weights", default="auto", show_default=True, metavar="auto|none|NAME|PATH",
              help="auto: the model's DEFAULT weights if already in the torch hub cache, else none (random values, "
                   "meaningless boxes); a torchvision weights name (DEFAULT, COCO_V1: downloaded once); a local file.")
@click.option("--device", default="auto", show_default=True, metavar="auto|cpu|cuda|cuda:N",
              help="Where the model runs (auto: a GPU when there is one).")
@click.option("--batch-size", "--batch_size", "batch_size", default="4", show_default=True, metavar="N",
              help="Images per forward pass.")
@click.option("--workers", default="1", show_default=True, metavar="N",
              help="Fan out over N Ray actors (RAY_ADDRESS, or a local Ray started for the run).")
def command(input_: str, output: str, model_name: str, threshold: str, weights: str, device: str, batch_size: str,
            workers: str) -> int:
    """Label images with a torchvision detection model: annotated copies, COCO dataset and results JSON."""
    opts = validate_options(input=input_, output=output, model_name=model_name, threshold=threshold,
                            weights=weights, device=device, batch_size=batch_size, workers=workers)
    return run(opts)


def _prog() -> str:
    name = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    return name if name.startswith("rayprof-") else "python -m frame_extract.image_annotator"


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (``rayprof-annotate``)."""
    raise SystemExit(run_cli(command, argv, _prog()))


if __name__ == "__main__":
    main()

__all__ = ["AnnotateOptions", "annotate", "collect_jobs", "command", "main", "run", "validate_options"]
