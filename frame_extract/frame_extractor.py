"""Extract frames from a video file or a live stream at a chosen rate.

    python -m frame_extract.frame_extractor -i video.mp4 -o output_frames --fps 0.5 --prefix shot_ --format png

Frames are chosen on a time basis, exactly like ffmpeg's ``fps`` filter (see
:mod:`frame_extract._fpsclock`), so variable-frame-rate and 29.97 fps sources behave: the same
command with ``ffmpeg -i video.mp4 -vf fps=0.5 …`` picks the same frames. An index
(``<prefix>index.csv`` or ``.json``) beside the images gives each file's source frame index and
timestamp. Bad input is one line on stderr and exit code 2; see ``frame_extract/README.md``.
"""

from __future__ import annotations

if __package__ in (None, ""):  # python frame_extract/frame_extractor.py (the original tool's way)
    import os.path
    import sys

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import csv
import io
import json
import math
import re
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import click

from frame_extract._common import (
    EXIT_INTERRUPTED,
    Progress,
    make_folder,
    parse_number,
    run_cli,
    warn,
    write_atomic,
)
from frame_extract._fpsclock import FpsClock, Pending, parse_rate, rate_text
from frame_extract._reader import FrameReader, InputInfo, open_input
from rayprof.errors import UserError, check_output_folder, did_you_mean

FORMATS = ("png", "jpg", "jpeg", "webp")
LOSSY = {"jpg": 95, "jpeg": 95, "webp": 90}   # default --quality
INDEX_FORMATS = ("csv", "json")
INDEX_COLUMNS = ("file_name", "frame_index", "timestamp_s", "output_index", "output_time_s")
#: Re-reads of a file (each decodes it again up to the frame) after which every frame is converted.
MAX_REREADS = 3
_PREFIX_OK = re.compile(r"^[^/\\\x00]{0,100}$")


@dataclass(frozen=True)
class ExtractOptions:
    """Validated options (see :func:`validate_options`)."""

    input: str
    output: Path
    fps: Fraction
    prefix: str = "frame_"
    fmt: str = "jpg"
    start: float = 0.0
    end: float | None = None
    max_duration: float | None = None
    quality: int | None = None
    index: str = "csv"
    overwrite: bool = False
    open_timeout_s: float = 10.0

    @property
    def ext(self) -> str:
        return self.fmt

    @property
    def index_name(self) -> str:
        return f"{self.prefix}index.{self.index}"

    def file_name(self, n: int) -> str:
        return f"{self.prefix}{n:06d}.{self.ext}"

    def stop_at(self) -> float | None:
        """The source time at which reading stops (``--end``, or ``--start + --max-duration``)."""
        ends = [e for e in (self.end, None if self.max_duration is None else self.start + self.max_duration)
                if e is not None]
        return min(ends) if ends else None


@dataclass
class ExtractResult:
    """What a run did: the rows of the index and the facts of the summary line."""

    rows: list[dict] = field(default_factory=list)
    frames_read: int = 0            # source frames decoded
    first_t: float | None = None    # timestamp of the first / last frame decoded
    last_t: float | None = None
    stopped_by: str = "end"         # end | end_time | max_duration | interrupted | stream_ended
    decode_errors: int = 0
    retrieved: int = 0              # frames converted (the rest were only decoded)
    rereads: int = 0
    truncated: str | None = None    # a sentence saying how much of a short file was read
    elapsed_s: float = 0.0


def validate_options(*, input: str, output: str, fps: str, prefix: str, fmt: str, start: str | None,
                     end: str | None, max_duration: str | None, quality: str | None, index: str,
                     overwrite: bool = False, open_timeout: str = "10") -> ExtractOptions:
    """The command line's strings → :class:`ExtractOptions`, or the first :class:`UserError`.
    Nothing is opened or written here."""
    rate = parse_rate("fps", fps)
    f = str(fmt).strip().lower().lstrip(".")
    if f not in FORMATS:
        raise UserError("format", fmt, "unknown image format" + did_you_mean(f, FORMATS),
                        "use png (lossless), jpg or webp")
    if not _PREFIX_OK.match(prefix):
        raise UserError("prefix", prefix, "may not contain / or \\ (files are written inside --output only)"
                        if len(prefix) <= 100 else "is longer than 100 characters",
                        "use a plain name part such as shot_ (put folders in --output)")
    t0 = parse_number("start", start or 0, minimum=0, fix="give the start in seconds, e.g. 12.5")
    t1 = None if end in (None, "") else parse_number(
        "end", end, minimum=0, fix="give the end in seconds, after --start")
    if t1 is not None and t1 <= t0:
        raise UserError("end", end, f"is not after --start ({t0:g} s)", "give an end later than the start")
    dur = None if max_duration in (None, "") else parse_number(
        "max_duration", max_duration, minimum=0, strict_min=True,
        fix="give the longest stretch of the stream to read, in seconds, e.g. 60")
    q = None
    if quality not in (None, ""):
        if f not in LOSSY:
            raise UserError("quality", quality, f"{f} is lossless, it has no quality setting",
                            "drop --quality, or use --format jpg or webp")
        q = parse_number("quality", quality, minimum=1, maximum=100, integer=True,
                         fix="use 1 (smallest files) to 100 (best)")
    ix = str(index).strip().lower()
    if ix not in INDEX_FORMATS:
        raise UserError("index", index, "unknown index format", "use csv or json")
    timeout = parse_number("open_timeout", open_timeout, minimum=0, strict_min=True,
                           fix="give seconds to wait for a stream to connect, e.g. 10")
    out = check_output_folder("output", output)
    return ExtractOptions(input=input, output=out, fps=rate, prefix=prefix, fmt=f, start=t0, end=t1,
                          max_duration=dur, quality=q, index=ix, overwrite=overwrite, open_timeout_s=timeout)


# -- the output folder -------------------------------------------------------------------------


def _previous_outputs(opts: ExtractOptions) -> list[Path]:
    """Files an earlier run with the same prefix left in the output folder: its frames (any
    format) and its index."""
    if not opts.output.is_dir():
        return []
    frame = re.compile(re.escape(opts.prefix) + r"\d{6,}\.(" + "|".join(FORMATS) + r")$")
    index = {f"{opts.prefix}index.{x}" for x in INDEX_FORMATS}
    return sorted(p for p in opts.output.iterdir() if p.is_file() and (frame.match(p.name) or p.name in index))


def prepare_output(opts: ExtractOptions) -> None:
    """Refuse to mix with an earlier run's frames unless ``--overwrite``; then create the folder
    (and, with ``--overwrite``, remove the earlier run's frames and index of this prefix)."""
    old = _previous_outputs(opts)
    if old and not opts.overwrite:
        raise UserError("output", str(opts.output),
                        f"already holds {len(old)} file(s) of an earlier run with prefix {opts.prefix!r} "
                        f"(e.g. {old[0].name})",
                        "choose another --output or --prefix, or pass --overwrite to replace them")
    make_folder("output", opts.output)
    for p in old:
        p.unlink(missing_ok=True)


# -- extraction --------------------------------------------------------------------------------


class _Writer:
    """Encodes a chosen frame once and writes it for each tick it fills."""

    def __init__(self, opts: ExtractOptions, clock: FpsClock):
        import cv2

        self.opts, self.clock = opts, clock
        self._params: list[int] = []
        if opts.fmt in ("jpg", "jpeg"):
            self._params = [cv2.IMWRITE_JPEG_QUALITY, opts.quality or LOSSY[opts.fmt]]
        elif opts.fmt == "webp":
            self._params = [cv2.IMWRITE_WEBP_QUALITY, opts.quality or LOSSY["webp"]]
        self.rows: list[dict] = []

    def write(self, frame: Pending, ticks: range, image, source_t: float) -> None:
        import cv2

        ok, buf = cv2.imencode("." + self.opts.ext, image, self._params)
        if not ok:
            raise RuntimeError(f"OpenCV could not encode a frame as {self.opts.fmt}")
        data = buf.tobytes()
        for tick in ticks:
            n = len(self.rows)
            name = self.opts.file_name(n)
            write_atomic(self.opts.output / name, data)
            self.rows.append({"file_name": name, "frame_index": frame.index, "timestamp_s": round(source_t, 6),
                              "output_index": n,
                              "output_time_s": round(self.opts.start + self.clock.tick_time(tick), 6)})


def extract(opts: ExtractOptions, reader: FrameReader, first_t: float, *,
            progress: Progress | None = None, wall: Callable[[], float] = time.monotonic) -> ExtractResult:
    """Read ``reader`` (positioned on its first frame, at ``first_t``) to the end, ``--end`` or
    ``--max-duration`` and write the frames the output clock chooses. Ctrl-C stops cleanly."""
    info = reader.info
    clock = FpsClock(opts.fps)
    writer = _Writer(opts, clock)
    res = ExtractResult(first_t=first_t)
    stop_at = opts.stop_at()
    held: tuple[int, object] | None = None     # (index, image) of the pending frame, if converted
    recent: deque[float] = deque(maxlen=8)     # recent frame intervals (s)
    prev_t: float | None = None
    kept: float | None = None                  # timestamp of the last frame given to the clock
    t: float | None = first_t
    started = wall()
    shown = -math.inf

    def emit(frame: Pending | None, ticks: range) -> None:
        nonlocal held
        if frame is None or not ticks:
            return
        if held is not None and held[0] == frame.index:
            image = held[1]
        else:  # a longer gap than predicted: read that frame again (files only, exact)
            image = reader.image_of(frame.index)
        writer.write(frame, ticks, image, frame.t + opts.start)

    try:
        while t is not None:
            if stop_at is not None and t >= stop_at:  # decoded, but past the end: not part of it
                res.stopped_by = "end_time" if opts.end is not None and stop_at == opts.end else "max_duration"
                break
            res.frames_read += 1
            res.last_t = t
            if prev_t is not None and t > prev_t:
                recent.append(t - prev_t)
            prev_t = t
            if t >= opts.start:
                rel = t - opts.start
                frame, ticks = clock.push(reader.index, rel)
                emit(frame, ticks)
                kept = t
                # Convert this frame only if it can be chosen: the next frame must come at or
                # after clock.boundary() for that. Predict its time from the recent intervals.
                # A live stream cannot be read again, so there every frame is converted; so it
                # is in a file whose gaps have already fooled the prediction a few times.
                margin = 2 * max(recent) if recent else math.inf
                if info.live or reader.rereads >= MAX_REREADS or rel + margin >= clock.boundary():
                    held = (reader.index, reader.image())
                    res.retrieved += 1
                else:
                    held = None
            now = wall()
            if progress is not None and now - shown >= 0.2:
                shown = now
                progress.update(t - first_t if info.live else t, f"{len(writer.rows)} written")
            t = reader.next()
        else:
            res.stopped_by = "stream_ended" if info.live else "end"
    except KeyboardInterrupt:
        res.stopped_by = "interrupted"
    # The end of the stream for the clock: the last frame's time plus its duration (1 / the
    # container's rate for files, as FFmpeg takes it; the last interval for live streams).
    if kept is not None:
        if not info.live and info.fps > 0:
            duration = 1.0 / info.fps
        elif recent:
            duration = recent[-1]
        else:
            duration = 1.0 / float(opts.fps)
        try:
            emit(*clock.finish(kept - opts.start + duration))
        except KeyboardInterrupt:
            res.stopped_by = "interrupted"
    res.rows = writer.rows
    if progress is not None and res.last_t is not None:
        done = progress.total if res.stopped_by in ("end", "end_time", "max_duration") and progress.total \
            else res.last_t - (first_t if info.live else 0)
        progress.update(done, f"{len(res.rows)} written")
    res.decode_errors = reader.decode_errors
    res.rereads = reader.rereads
    if res.stopped_by == "end" and info.duration_s > 0 and res.last_t is not None:
        got = res.last_t + (1.0 / info.fps)
        expected = info.duration_s
        if got < expected - max(2.0 / info.fps, 0.01 * expected):
            res.truncated = (f"the video ends early: {res.frames_read} frame(s) could be read, "
                             f"{got:.2f} s of {expected:.2f} s ({100 * got / expected:.0f} %); "
                             "the file is truncated or damaged, the frames it had were extracted")
    res.elapsed_s = wall() - started
    reader.close()
    return res


def write_index(opts: ExtractOptions, info: InputInfo, res: ExtractResult) -> Path:
    """``<prefix>index.csv`` (one row per file) or ``<prefix>index.json`` (the rows plus the run's
    settings), written atomically in the output folder."""
    path = opts.output / opts.index_name
    if opts.index == "csv":
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=INDEX_COLUMNS, lineterminator="\n")
        w.writeheader()
        w.writerows(res.rows)
        data = buf.getvalue()
    else:
        doc = {"tool": "frame_extract.frame_extractor", "source": info.display, "fps": rate_text(opts.fps),
               "format": opts.fmt, "prefix": opts.prefix, "start_s": opts.start, "end_s": opts.end,
               "max_duration_s": opts.max_duration, "stopped_by": res.stopped_by,
               "source_frames_read": res.frames_read, "truncated": res.truncated, "frames": res.rows}
        data = json.dumps(doc, indent=2) + "\n"
    write_atomic(path, data.encode("utf-8"))
    return path


_STOPS = {"end": "to the end", "end_time": "to --end", "max_duration": "for --max-duration",
          "interrupted": "until interrupted", "stream_ended": "until the stream ended"}


def summary_line(opts: ExtractOptions, info: InputInfo, res: ExtractResult, index: Path) -> str:
    span = "" if res.first_t is None or res.last_t is None else f" ({res.first_t:.3f}–{res.last_t:.3f} s)"
    return (f"extracted {len(res.rows)} frame(s) at {rate_text(opts.fps)} fps as {opts.fmt} from {info.display}: "
            f"read {res.frames_read} source frame(s){span} {_STOPS[res.stopped_by]}, in {res.elapsed_s:.1f} s; "
            f"wrote {opts.output}/{opts.prefix}NNNNNN.{opts.ext} and {index.name}")


def run(opts: ExtractOptions) -> int:
    """Open, check, extract, index, summarise. Returns the exit code."""
    reader, first_t = open_input(opts.input, open_timeout_s=opts.open_timeout_s,
                                 read_timeout_s=max(opts.open_timeout_s, 5.0))
    info = reader.info
    try:
        if info.duration_s and opts.start >= info.duration_s:
            raise UserError("start", f"{opts.start:g}", f"is past the end of the video ({info.duration_s:.2f} s long)",
                            f"use a start below {info.duration_s:.2f}")
        prepare_output(opts)
    except BaseException:
        reader.close()
        raise
    ends = [x for x in (info.duration_s, opts.stop_at()) if x]  # seconds of source time to read
    total = min(ends) if ends else None
    with Progress(f"frames from {info.display}", total) as progress:
        res = extract(opts, reader, first_t, progress=progress)
    index = write_index(opts, info, res)
    if res.truncated:
        warn(res.truncated)
    if res.decode_errors:
        warn(f"{res.decode_errors} damaged frame(s) could not be decoded and were skipped")
    if not res.rows:
        warn("no frame was extracted: the input has no frames in the chosen time range")
    print(summary_line(opts, info, res, index), flush=True)
    if res.stopped_by == "interrupted" and not info.live:
        return EXIT_INTERRUPTED
    return 0


# -- the command -------------------------------------------------------------------------------


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("-i", "--input", "input_", required=True, metavar="VIDEO|URL",
              help="A video file (or `sample`, rayprof's generated test video), an http(s)://, rtsp:// URL "
                   "or a camera index.")
@click.option("-o", "--output", required=True, metavar="FOLDER", help="Where the frames go (created if missing).")
@click.option("--fps", default="1", show_default=True, metavar="RATE",
              help="Frames per second of the output clock: 0.5 = one every 2 s; 30000/1001 is fine too.")
@click.option("--prefix", default="frame_", show_default=True, help="File names are <prefix>000000.<format>, …")
@click.option("--format", "fmt", default="jpg", show_default=True, metavar="png|jpg|webp", help="Image format.")
@click.option("--start", default="0", show_default=True, metavar="SECONDS", help="Skip the video before this time.")
@click.option("--end", default=None, metavar="SECONDS", help="Stop at this time of the video.")
@click.option("--max-duration", "--max_duration", "max_duration", default=None, metavar="SECONDS",
              help="Read at most this much of the input (from --start); the way to bound a live stream.")
@click.option("--quality", default=None, metavar="1-100",
              help="jpg and webp quality (default 95 for jpg, 90 for webp).")
@click.option("--index", "index_fmt", default="csv", show_default=True, metavar="csv|json",
              help="Format of the index written beside the images (<prefix>index.csv/.json).")
@click.option("--overwrite", is_flag=True, help="Replace the frames and index an earlier run with this prefix left.")
@click.option("--open-timeout", "--open_timeout", "open_timeout", default="10", show_default=True,
              metavar="SECONDS", help="Streams: time allowed to connect (and for each frame).")
def command(input_: str, output: str, fps: str, prefix: str, fmt: str, start: str, end: str | None,
            max_duration: str | None, quality: str | None, index_fmt: str, overwrite: bool,
            open_timeout: str) -> int:
    """Extract frames from a video or stream at a chosen rate, with ffmpeg's fps-filter timing."""
    opts = validate_options(input=input_, output=output, fps=fps, prefix=prefix, fmt=fmt, start=start, end=end,
                            max_duration=max_duration, quality=quality, index=index_fmt, overwrite=overwrite,
                            open_timeout=open_timeout)
    return run(opts)


def _prog() -> str:
    name = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    return name if name.startswith("rayprof-") else "python -m frame_extract.frame_extractor"


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (``rayprof-extract-frames``)."""
    raise SystemExit(run_cli(command, argv, _prog()))


if __name__ == "__main__":
    main()

__all__ = ["ExtractOptions", "ExtractResult", "command", "extract", "main", "run", "validate_options", "write_index"]
