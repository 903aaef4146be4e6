"""What both tools share: quiet OpenCV logs, the one-line error boundary, the progress bar, and
small helpers for validated numbers and atomic writes.

Import this module before anything that imports cv2: OpenCV and its FFmpeg backend read their
log levels once, at import, and their C logs would add lines to a one-line user error.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path

# OpenCV's and FFmpeg's C logs go straight to stderr; keep a user error to its one line
# (set these variables yourself to see them again).
os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")

import click  # noqa: E402

from rayprof.errors import UserError  # noqa: E402

#: Exit code of a run stopped with Ctrl-C (128 + SIGINT), as shells report it.
EXIT_INTERRUPTED = 130


def run_cli(command: click.Command, argv: Sequence[str] | None, prog_name: str) -> int:
    """Run a click command with the project's error rules and return the exit code.

    A user mistake (:class:`UserError`, or a command-line usage error from click) is one line
    on stderr, ``error: …``, exit code 2, no traceback. ``--help`` prints help and exits 0.
    """
    try:
        code = command.main(args=list(sys.argv[1:] if argv is None else argv), prog_name=prog_name,
                            standalone_mode=False)
    except UserError as e:
        print(f"error: {one_line(e.message)}", file=sys.stderr)
        return e.exit_code
    except click.UsageError as e:  # unknown option, missing -i/-o, a flag without its value
        print(f"error: {one_line(e.format_message()).rstrip('.')}; see {prog_name} --help", file=sys.stderr)
        return 2
    except click.exceptions.Abort:  # Ctrl-C inside click itself
        print("error: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    if code is None:  # --help / --version
        return 0
    return int(code)


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def script_mode_path(file: str) -> None:
    """Allow ``python frame_extract/frame_extractor.py`` (the original tool's way) as well as
    ``python -m frame_extract.frame_extractor``: put the repository root on ``sys.path``."""
    root = str(Path(file).resolve().parents[1])
    if root not in sys.path:
        sys.path.insert(0, root)


# -- validated values ------------------------------------------------------------------------


def parse_number(field: str, text: str | float, *, fix: str, minimum: float | None = None,
                 maximum: float | None = None, strict_min: bool = False, integer: bool = False) -> float:
    """``text`` as a finite number in range, or a :class:`UserError` naming ``field``."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise UserError(field, text, "not a number", fix) from None
    if not math.isfinite(value):
        raise UserError(field, text, "not a finite number", fix)
    if integer and value != int(value):
        raise UserError(field, text, "not a whole number", fix)
    if minimum is not None and (value <= minimum if strict_min else value < minimum):
        raise UserError(field, text, f"must be {'greater than' if strict_min else 'at least'} {minimum:g}", fix)
    if maximum is not None and value > maximum:
        raise UserError(field, text, f"must be at most {maximum:g}", fix)
    return int(value) if integer else value


def make_folder(field: str, out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(field, str(out), f"cannot be created ({e.strerror or e})",
                        "choose a folder you may write to") from None


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to a hidden temporary name beside ``path``, then rename it into place, so
    a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def inside(folder: Path, path: Path) -> bool:
    """True if ``path`` stays inside ``folder`` (after resolving ``..`` and links)."""
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


# -- progress --------------------------------------------------------------------------------


class Progress:
    """A rich progress bar on stderr while it is a terminal; silent otherwise (logs, pipes, tests)."""

    def __init__(self, description: str, total: float | None, unit: str = ""):
        from rich.console import Console
        from rich.progress import BarColumn, TextColumn, TimeElapsedColumn
        from rich.progress import Progress as RichProgress

        self.console = Console(stderr=True)
        self.enabled = self.console.is_terminal
        self._bar = RichProgress(TextColumn("{task.description}"), BarColumn(),
                                 TextColumn("{task.fields[done]}"), TimeElapsedColumn(),
                                 console=self.console, transient=False, disable=not self.enabled)
        self.total = total
        self._task = self._bar.add_task(description, total=total, done="")

    def __enter__(self) -> Progress:
        self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.stop()

    def update(self, completed: float, note: str = "") -> None:
        if self.enabled:
            self._bar.update(self._task, completed=completed, done=note)

    def advance(self, n: float, note: str = "") -> None:
        if self.enabled:
            self._bar.update(self._task, advance=n, done=note)


def warn(message: str) -> None:
    print(f"warning: {one_line(message)}", file=sys.stderr, flush=True)
