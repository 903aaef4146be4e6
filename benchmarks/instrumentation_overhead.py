"""What rayprof's per-step instrumentation costs, measured side by side in one run.

1. Engine overhead per step: ``StreamWorker`` driving no-op stages (an in-memory source, an
   identity prep, a no-op model) against a bare loop making the same calls. The difference is
   what rayprof adds per step: NVTX/profiler marks, the stage timer, the row, the flush.
2. ``mark()`` alone, with no profiler attached.
3. Throughput ratio on a real model: a bare PyTorch loop (prep → forward under
   ``inference_mode``) against ``StreamWorker`` on the same frames, the same Preprocessor and
   the same ModelRunner, interleaved A/B/A/B; the median ratio is reported.

    python benchmarks/instrumentation_overhead.py [--model mobilenet_v3_small] [--steps 60]

Prints a table and rewrites its section of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rayprof import __version__  # noqa: E402
from rayprof.markers import mark  # noqa: E402
from rayprof.model import ModelRunner  # noqa: E402
from rayprof.plan import WorkerPlan  # noqa: E402
from rayprof.prep import Preprocessor  # noqa: E402
from rayprof.source import FrameBatch, SourceSettings  # noqa: E402
from rayprof.worker import StreamWorker  # noqa: E402


class MemorySource:
    """Serves pre-decoded frames round-robin: no decode cost, identical for both loops."""

    kind, display, live = "memory", "memory", False

    def __init__(self, frames: np.ndarray, stamps: list | None = None):
        self.frames, self.i, self.stamps = frames, 0, stamps

    def read(self, n: int) -> FrameBatch:
        if self.stamps is not None:  # step boundaries, seen the same way from both loops
            self.stamps.append(time.perf_counter())
        idx = (np.arange(self.i, self.i + n) % len(self.frames))
        self.i += n
        return FrameBatch(frames=self.frames[idx], capture_ts=np.full(n, time.time()), indices=idx, dropped=0)

    def stats(self) -> dict:
        return {}

    def close(self) -> None:
        pass


class NoopRunner:
    info = None

    def step(self, x, labels=None, step=0):
        return None

    def synchronize(self):
        return None

    def make_labels(self, n, generator):
        return None


def plan(batch: int, steps: int, model: str = "noop") -> WorkerPlan:
    return WorkerPlan(run_id="bench", worker="bench", replica=0, actor_id="bench-0",
                      source=SourceSettings(uri="memory"), model=model, weights=None, num_classes=None,
                      compile=False, amp=False, lr=1e-3, mode="inference", batch_size=batch, prep_level="simple",
                      prep_device="cpu", prep_size=224, exec_device="cpu", cores=(), cores_spec="all", num_cpus=1, num_gpus=0,
                      max_steps=steps, warmup_steps=0, seed=0, flush_interval_s=1.0)


def engine_overhead_us(steps: int = 200_000) -> tuple[float, float]:
    """(bare µs/step, engine µs/step) with no-op stages."""
    frames = np.zeros((1, 8, 8, 3), np.uint8)
    src = MemorySource(frames)
    ident = lambda x: x  # noqa: E731
    runner = NoopRunner()
    t0 = time.perf_counter()
    for _ in range(steps):
        b = src.read(1)
        x = ident(b.frames)
        runner.step(x)
        runner.synchronize()
    bare = (time.perf_counter() - t0) / steps * 1e6
    rows = []
    w = StreamWorker(plan(1, steps), rows.append, pin=False, source_factory=lambda p: MemorySource(frames),
                     prep_factory=lambda p: ident, runner_factory=lambda p: runner)
    w.setup()
    t0 = time.perf_counter()
    res = w.run()
    engine = (time.perf_counter() - t0) / steps * 1e6
    assert res.steps == steps and sum(b.num_rows for b in rows) == steps
    return bare, engine


def mark_ns(n: int = 500_000) -> float:
    t0 = time.perf_counter()
    for i in range(n):
        with mark("exec", i):
            pass
    return (time.perf_counter() - t0) / n * 1e9


def model_ratio(model: str, batch: int, steps: int, rounds: int) -> dict:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(64, 240, 320, 3), dtype=np.uint8)
    prep = Preprocessor("simple", "cpu", size=224)
    runner = ModelRunner(model, mode="inference", device="cpu")
    for _ in range(3):  # warm both paths' caches
        runner.step(prep(frames[:batch]))

    def bare() -> list[float]:
        stamps: list[float] = []
        src = MemorySource(frames, stamps)
        for _ in range(steps):
            b = src.read(batch)
            x = prep(b.frames)
            with torch.inference_mode():
                runner.module(x)
        src.read(batch)
        return stamps

    def engine() -> list[float]:
        stamps: list[float] = []
        w = StreamWorker(plan(batch, steps + 1, model), lambda b: None, pin=False,
                         source_factory=lambda p: MemorySource(frames, stamps), prep_factory=lambda p: prep,
                         runner_factory=lambda p: runner)
        w.setup()
        res = w.run()
        assert res.steps == steps + 1
        return stamps

    # the time from one step's read to the next one's, from both loops, interleaved; the median
    # step is robust to the hiccups of a shared machine
    bare_steps, engine_steps = [], []
    for _ in range(rounds):
        bare_steps += list(np.diff(bare()))
        engine_steps += list(np.diff(engine()))
    b_med, e_med = float(np.median(bare_steps)), float(np.median(engine_steps))
    return {"model": model, "batch": batch, "steps": steps, "rounds": rounds,
            "bare_fps": batch / b_med, "rayprof_fps": batch / e_med, "ratio": b_med / e_med,
            "bare_ms": b_med * 1e3, "rayprof_ms": e_med * 1e3}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mobilenet_v3_small")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)

    bare_us, engine_us = engine_overhead_us()
    m_ns = mark_ns()
    ratios = [model_ratio(args.model, b, args.steps if b == 8 else args.steps * 4, args.rounds) for b in (1, 8)]

    lines = [
        "## Instrumentation overhead (`benchmarks/instrumentation_overhead.py`)",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, CPU only; "
        f"torch {torch.__version__}, rayprof {__version__}, Python {platform.python_version()}; "
        f"{time.strftime('%Y-%m-%d')}.",
        f"Reproduce: `python benchmarks/instrumentation_overhead.py --model {args.model} --steps {args.steps} "
        f"--rounds {args.rounds}`",
        "",
        "| measure | value |",
        "|---|---|",
        f"| bare loop, no-op stages | {bare_us:.2f} µs/step |",
        f"| `StreamWorker`, no-op stages | {engine_us:.2f} µs/step |",
        f"| **instrumentation per step** (marks, timer, row, flush) | **{engine_us - bare_us:.2f} µs** |",
        f"| one `mark()` with no profiler attached | {m_ns:.0f} ns |",
        "",
        "| model | batch | steps × rounds | bare PyTorch: median step, FPS | rayprof: median step, FPS | ratio |",
        "|---|---|---|---|---|---|",
    ]
    for r in ratios:
        lines.append(f"| {r['model']} | {r['batch']} | {r['steps']} × {r['rounds']} | {r['bare_ms']:.2f} ms, "
                     f"{r['bare_fps']:.1f} | {r['rayprof_ms']:.2f} ms, {r['rayprof_fps']:.1f} | **{r['ratio']:.3f}** |")
    lines += ["", "Both loops run the same frames through the same `Preprocessor` and `ModelRunner` (prep → "
              "forward under `inference_mode`), interleaved round by round. A step is the time from one "
              "`read` to the next, and the ratio is bare ÷ rayprof median step time, so a ratio of 1.0 means "
              "no measurable cost. Goal (issue 8): ratio ≥ 0.99 and instrumentation ≤ 10 µs per step.", "",
              "On a shared 2-core VM the batch-1 ratio moves by about ±5 % from run to run: the model step "
              "itself varies between 12 and 15 ms when it is timed in isolation. The no-op rows isolate what "
              "rayprof adds to a step, and that is the figure to compare.", ""]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_section(ROOT / "benchmarks" / "RESULTS.md", "## Instrumentation overhead", text)


def write_section(path: Path, heading: str, text: str) -> None:
    """Replace (or append) the section that starts with ``heading`` in the results page."""
    old = path.read_text() if path.exists() else "# Benchmark results\n\nNumbers measured side by side in one run; each section names its command.\n\n"
    start = old.find(heading)
    if start < 0:
        new = old.rstrip() + "\n\n" + text
    else:
        end = old.find("\n## ", start + len(heading))
        new = old[:start] + text.rstrip() + "\n" + (old[end:] if end >= 0 else "")
    path.write_text(new.rstrip() + "\n")


if __name__ == "__main__":
    main()
