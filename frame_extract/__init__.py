"""The two helper tools of the original project, rebuilt on rayprof.

- :mod:`frame_extract.frame_extractor` — frames from a video file or a live stream at a chosen
  rate, with ffmpeg's ``fps`` filter semantics, and an index of what was written.
- :mod:`frame_extract.image_annotator` — any torchvision detection model over a folder of images:
  annotated copies, a COCO dataset JSON and a COCO results JSON; ``--workers N`` fans out over Ray.

Run them as ``python -m frame_extract.frame_extractor …`` / ``python -m frame_extract.image_annotator …``
(or the ``rayprof-extract-frames`` / ``rayprof-annotate`` console scripts). See ``frame_extract/README.md``.
"""
