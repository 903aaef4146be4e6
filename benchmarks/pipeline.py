"""``pipeline: serial`` against ``pipeline: overlap`` and the bound, on the same stages, in one run.

In overlap the prefetch thread reads and preprocesses the next batch while the model runs this
one, so the pipeline has two stages: read + prep (the prefetch thread) and exec (the worker's
thread). Its bound is ``batch / max(read + prep, exec)`` frames per second, from the stage
medians of the same round's serial run (each stage timed with nothing running beside it). Two
cases, each run in both modes in interleaved rounds:

1. Sleeping stages (a source, prep and model that ``time.sleep``): time but no CPU, so the gap
   to the bound is the pipeline's own cost (thread hand-off, wake-ups), whatever the machine.
2. A real model: a generated MPEG-4 video read in a loop by rayprof's ``FileSource``, the
   ``simple`` Preprocessor at 224 px and one ``ModelRunner`` (mobilenet_v3_small, batch 8).

Threads: ``torch.set_num_threads(--threads)`` (default: half the cores, at least 1) for the model
and for the prefetch thread's preprocessing alike (torch's setting is process-wide), so on two
cores each thread has one. OpenCV's decoder uses its own threads (as many as the process may use
cores). Throughput is frames over the sum of the measured steps' ``total_ms`` (the worker's wall
clock: in overlap, wait + exec), warm-up steps left out; each figure is the median over rounds.

    python benchmarks/pipeline.py [--model mobilenet_v3_small] [--batch 8] [--size 1280x720] [--steps 40] [--rounds 5]

Prints a table and rewrites its section of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from instrumentation_overhead import plan, write_section  # noqa: E402

from rayprof import __version__  # noqa: E402
from rayprof.model import ModelRunner  # noqa: E402
from rayprof.plan import WorkerPlan  # noqa: E402
from rayprof.source import FrameBatch, SourceSettings, make_sample_video  # noqa: E402
from rayprof.worker import StreamWorker  # noqa: E402

GOAL = 0.95  # overlap ÷ bound (issue 8)
WARMUP = 3
STAGES = ("read", "prep", "wait", "exec", "total")


class SleepSource:
    """Frames after ``read_s`` of sleeping: a stage that takes time but no CPU."""

    kind, display, live = "sleep", "sleep", False

    def __init__(self, read_s: float):
        self.read_s, self.frames = read_s, np.zeros((64, 8, 8, 3), np.uint8)

    def read(self, n: int) -> FrameBatch:
        time.sleep(self.read_s)
        return FrameBatch(frames=self.frames[:n], capture_ts=np.full(n, time.time()), indices=np.arange(n), dropped=0)

    def stats(self) -> dict:
        return {}

    def close(self) -> None:
        pass


class SleepRunner:
    """A model step of ``exec_s`` of sleeping."""

    info = None

    def __init__(self, exec_s: float):
        self.exec_s = exec_s

    def step(self, x, labels=None, step=0):
        time.sleep(self.exec_s)

    def synchronize(self):
        return None


def run_once(p: WorkerPlan, pipeline: str, **factories) -> dict:
    """One worker run of plan ``p``: the medians of its measured steps' stages (ms), its
    throughput (frames over the sum of their ``total_ms``), the bound its stages give, and the
    cores it kept busy (the process's CPU time over the run's wall time)."""
    rows: list[pa.RecordBatch] = []
    cpu0, wall0 = time.process_time(), time.perf_counter()
    res = StreamWorker(replace(p, pipeline=pipeline), rows.append, pin=False, **factories).run()
    cores = (time.process_time() - cpu0) / (time.perf_counter() - wall0)
    if res.status != "completed":
        raise RuntimeError(f"{pipeline} run {res.status}: {res.error}")
    df = pa.Table.from_batches(rows).to_pandas()
    df = df[~df["warmup"]]
    out = {s: float(df[f"{s}_ms"].median()) if df[f"{s}_ms"].notna().any() else float("nan") for s in STAGES}
    out["fps"] = df["frames"].sum() / (df["total_ms"].sum() / 1e3)
    out["bound"] = p.batch_size * 1e3 / max(out["read"] + out["prep"], out["exec"])
    out["cores"] = cores
    return out


def measure(case: str, p: WorkerPlan, rounds: int, **factories) -> dict[str, list[dict]]:
    """Serial and overlap runs of ``p``, interleaved (the machine's mood hits both modes alike)."""
    runs: dict[str, list[dict]] = {"serial": [], "overlap": []}
    for r in range(rounds):
        for pipeline in (("serial", "overlap") if r % 2 == 0 else ("overlap", "serial")):
            runs[pipeline].append(run_once(p, pipeline, **factories))
        s, o = runs["serial"][-1], runs["overlap"][-1]
        print(f"{case} round {r + 1}/{rounds}: serial {s['fps']:.1f} fps, overlap {o['fps']:.1f} fps, "
              f"bound {s['bound']:.1f} fps", flush=True)
    return runs


def median(runs: list[dict], key: str) -> float:
    return float(np.median([r[key] for r in runs]))


def table(case: str, runs: dict[str, list[dict]]) -> tuple[list[str], float]:
    """The case's rows (serial, overlap, bound) and overlap ÷ bound (median of the rounds' ratios;
    the bound is the same round's serial stages)."""
    serial, overlap = runs["serial"], runs["overlap"]
    s_fps, bound = median(serial, "fps"), median(serial, "bound")
    ratio = float(np.median([o["fps"] / s["bound"] for s, o in zip(serial, overlap)]))
    lines = []
    for name, mode_runs in (("serial", serial), ("overlap", overlap)):
        fps = median(mode_runs, "fps")
        cells = " | ".join("-" if np.isnan(median(mode_runs, s)) else f"{median(mode_runs, s):.1f}" for s in STAGES)
        lines.append(f"| {case} | {name} | **{fps:.1f}** | {cells} | {median(mode_runs, 'cores'):.2f} | "
                     f"{fps / s_fps:.2f} | {fps / bound:.3f} |")
    lines.append(f"| {case} | bound: batch ÷ max(read + prep, exec) | **{bound:.1f}** | | | | | | | "
                 f"{bound / s_fps:.2f} | 1 |")
    return lines, ratio


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mobilenet_v3_small")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", default="1280x720", help="video WIDTHxHEIGHT")
    ap.add_argument("--steps", type=int, default=40, help="measured steps per run")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) // 2))
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    width, height = (int(v) for v in args.size.split("x"))
    batch, steps = args.batch, args.steps + WARMUP
    load0 = os.getloadavg()
    sleep_plan = replace(plan(batch, steps), warmup_steps=WARMUP)
    sleeping = measure("sleep", sleep_plan, args.rounds, source_factory=lambda p: SleepSource(0.010),
                       prep_factory=lambda p: lambda frames: time.sleep(0.008) or frames,
                       runner_factory=lambda p: SleepRunner(0.025))
    runner = ModelRunner(args.model, mode="inference", device="cpu")
    runner.warmup(batch)
    with tempfile.TemporaryDirectory(prefix="rayprof-bench-pipeline-") as tmp:
        video = make_sample_video(Path(tmp) / "clip.mp4", seconds=4.0, fps=30.0, width=width, height=height)
        model_plan = replace(plan(batch, steps, args.model), warmup_steps=WARMUP,
                             source=SourceSettings(uri=str(video), loop=True))
        model = measure(args.model, model_plan, args.rounds, runner_factory=lambda p: runner)
    load1 = os.getloadavg()

    sleep_rows, sleep_ratio = table("sleeping stages", sleeping)
    model_rows, model_ratio = table(args.model, model)
    lines = [
        "## Pipelined mode (`benchmarks/pipeline.py`)",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, CPU only, shared: load "
        f"average {load0[0]:.1f} before, {load1[0]:.1f} after; torch {torch.__version__} with "
        f"{args.threads} thread(s), rayprof {__version__}, Python {platform.python_version()}; {time.strftime('%Y-%m-%d')}.",
        f"Reproduce: `python benchmarks/pipeline.py --model {args.model} --batch {batch} --size {args.size} "
        f"--steps {args.steps} --rounds {args.rounds} --threads {args.threads}`",
        "",
        f"Two cases, batch {batch}, {args.steps} measured steps per run, {args.rounds} interleaved rounds, medians "
        "(stage columns in ms): **sleeping stages** (read 10 ms, prep 8 ms, exec 25 ms of `time.sleep`: time "
        "but no CPU, so what is left is the pipeline's own cost) and **"
        f"{args.model}** (`simple` prep to 224 px on the CPU, a {width}x{height} MPEG-4 video read by "
        "`FileSource` in a loop).",
        "",
        "| case | mode | FPS | read | prep | wait | exec | total | cores busy | ÷ serial | ÷ bound |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *sleep_rows,
        *model_rows,
        "",
        f"Overlap ÷ bound (median of the rounds' ratios; goal ≥ {GOAL}): **{sleep_ratio:.3f}** with sleeping "
        f"stages, **{model_ratio:.3f}** with {args.model}. In overlap, read and prep run on the prefetch thread "
        "while the model runs, so they are not part of `total`; `wait` is the worker's thread waiting for its "
        "next batch. Where overlap's read, prep or exec take longer than serial's, the two threads are slowing "
        "each other down (cores, memory bandwidth, other jobs on the machine), which the bound, taken from stages "
        "timed alone in the same round's serial run, does not include. *Cores busy* is the process's CPU time "
        "over the run's wall time: overlap can only beat serial by as much as it gets a second core.",
        "",
    ]
    if model_ratio < GOAL:
        busy = median(model["overlap"], "cores")
        lines += [f"With {args.model} the goal is missed by {GOAL - model_ratio:.3f}: the process kept "
                  f"{busy:.2f} cores busy in overlap, so the prefetch thread and the model did not get a core each "
                  "and each stage took longer than alone. The sleeping stages, which need no core, reach the bound: "
                  "the gap is the machine's, not the pipeline's. A run with a free core per thread (or the model "
                  "on a GPU) would close it. Per round, overlap's cores busy → its ÷ bound: "
                  + ", ".join(f"{o['cores']:.2f} → {o['fps'] / s['bound']:.2f}"
                              for s, o in zip(model["serial"], model["overlap"])) + ".", ""]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_section(ROOT / "benchmarks" / "RESULTS.md", "## Pipelined mode", text)


if __name__ == "__main__":
    main()
