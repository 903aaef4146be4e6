"""ffmpeg's ``fps`` filter, frame by frame, as a pure state machine (no I/O, no cv2).

The output clock ticks at ``fps``: tick ``n`` is at ``n / fps`` seconds. Every input frame gets
the tick its timestamp rounds to (``round(t * fps)``, halves away from zero: ffmpeg's default
``round=near``). Tick ``n`` shows the *last* input frame whose rounded tick is ``≤ n``, so:

- when the output rate is lower than the source's, each output frame is the last source frame
  before the middle of the next tick (from 30 fps at ``fps=0.5``: the frames at 0.967 s,
  2.967 s, 4.967 s, …; a frame is never shown before its time);
- when it is higher, source frames are repeated (duplicated) to fill the ticks;
- the clock starts at the first frame's tick, and the last frame is repeated up to the tick the
  end of the stream rounds to (the end = last frame's timestamp + its duration), exactly as
  libavfilter's ``vf_fps.c`` does with ``eof_action=round``.

:class:`FpsClock` takes frames one at a time, as a decoder delivers them, and says which ticks
the *previous* frame fills once the next one is known. :meth:`FpsClock.boundary` says, before the
next frame is decoded, from what time on it would make the pending frame an output frame, which
lets the extractor skip converting frames that can never be chosen.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

from rayprof.errors import UserError

#: Slack for timestamps that come as float milliseconds: an exact half (``t * fps = n + 0.5``)
#: must round up, as in ffmpeg's integer arithmetic, even if it arrives as ``n + 0.4999999999``.
TIE_EPS = 1e-9


def parse_rate(field: str, text: str | float | Fraction) -> Fraction:
    """``0.5``, ``2``, ``1/2``, ``30000/1001`` → an exact positive :class:`Fraction`, or a
    :class:`UserError` naming ``field``."""
    fix = "use a rate in frames per second, e.g. 0.5 (one frame every 2 s), 1, 5 or 30000/1001"
    if isinstance(text, Fraction):
        rate = text
    else:
        raw = str(text).strip()
        try:
            rate = Fraction(raw)
        except (ValueError, ZeroDivisionError):
            raise UserError(field, text, "not a frame rate", fix) from None
    if rate <= 0:
        raise UserError(field, text, "must be greater than 0", fix)
    if rate > 1000:
        raise UserError(field, text, "is more than 1000 frames per second", fix)
    return rate


def rate_text(rate: Fraction) -> str:
    """``1/2`` → ``0.5``, ``30000/1001`` → ``30000/1001``: the shortest exact spelling."""
    if rate.denominator == 1:
        return str(rate.numerator)
    f = float(rate)
    if Fraction(repr(f)) == rate:
        return repr(f)
    return f"{rate.numerator}/{rate.denominator}"


def round_near(x: float) -> int:
    """Round to the nearest integer, halves away from zero (``AV_ROUND_NEAR_INF``)."""
    if x >= 0:
        return math.floor(x + 0.5 + TIE_EPS)
    return -math.floor(-x + 0.5 + TIE_EPS)


@dataclass(frozen=True)
class Pending:
    """The frame that fills the next tick(s) until a later frame takes over."""

    index: int      # source frame index (0 = the first decoded frame)
    t: float        # its timestamp in seconds, on the clock the ticks count from
    tick: int       # round(t * fps)


class FpsClock:
    """Choose frames for an output clock of ``fps`` from frames pushed in decode order."""

    def __init__(self, fps: Fraction | float):
        self.fps = Fraction(fps)
        self._f = float(self.fps)
        self.first_tick: int | None = None   # the clock starts here (the first frame's tick)
        self.next_tick: int | None = None    # the next tick to fill
        self.pending: Pending | None = None

    def tick_of(self, t: float) -> int:
        return round_near(t * self._f)

    def push(self, index: int, t: float) -> tuple[Pending | None, range]:
        """Take frame ``index`` at time ``t``; return the previous pending frame and the ticks
        it fills (an empty range when it is replaced before filling any)."""
        tick = self.tick_of(t)
        prev = self.pending
        ticks = range(0)
        if self.next_tick is None:
            self.first_tick = self.next_tick = tick
        elif prev is not None and tick > self.next_tick:
            ticks = range(self.next_tick, tick)
            self.next_tick = tick
        self.pending = Pending(index, t, tick)
        return prev, ticks

    def boundary(self) -> float:
        """The time from which a next frame would make the pending frame fill a tick: a frame
        at or after this time rounds past the next tick. (An end of stream at or after it does
        too.) ``inf`` before the first frame."""
        if self.next_tick is None:
            return math.inf
        return (self.next_tick + 0.5) / self._f

    def finish(self, end_t: float) -> tuple[Pending | None, range]:
        """End of stream at ``end_t`` (the last frame's timestamp plus its duration): the ticks
        the pending frame still fills, up to the tick ``end_t`` rounds to (not included)."""
        prev, self.pending = self.pending, None
        if prev is None or self.next_tick is None:
            return prev, range(0)
        end_tick = self.tick_of(end_t)
        ticks = range(self.next_tick, max(self.next_tick, end_tick))
        self.next_tick = ticks.stop
        return prev, ticks

    def tick_time(self, tick: int) -> float:
        """Seconds of tick ``tick`` on the output clock."""
        return float(Fraction(tick) / self.fps)
