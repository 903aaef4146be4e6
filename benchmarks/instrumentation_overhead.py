"""What rayprof's per-step instrumentation costs, measured side by side in one run.

1. Engine overhead per step: ``StreamWorker`` driving no-op stages (an in-memory source, an
   identity prep, a no-op model) against a bare loop making the same calls. The difference is
   what rayprof adds per step: NVTX/profiler marks, the stage timer, the row, the flush. The same
   no-op worker in ``pipeline: overlap`` shows, for information, what handing each batch over
   from the prefetch thread costs when there is no work to hide it behind.
2. ``mark()`` alone, with no profiler attached.
3. Throughput ratio on a real model: a bare PyTorch loop (prep → forward under
   ``inference_mode``) against ``StreamWorker`` on the same frames, the same Preprocessor and
   the same ModelRunner.

Every comparison runs in interleaved rounds (A B, B A, A B, …), so a slow minute of a shared
machine falls on both sides. Other jobs only ever add time, so the fastest round (no-op cases)
and the fastest step (model cases) are the estimates of the cost itself; medians are printed
beside them to show how much the machine's load moved things.

    python benchmarks/instrumentation_overhead.py [--model mobilenet_v3_small] [--steps 40] [--rounds 7]

Prints a table and rewrites its section of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import replace
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

GOAL_US = 10.0  # instrumentation per step (issue 8)
GOAL_RATIO = 0.99  # rayprof ÷ bare throughput


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


def interleaved(cases: dict[str, Callable[[], object]], rounds: int) -> dict[str, list]:
    """Each case's results over ``rounds`` rounds, the order reversed every other round."""
    out: dict[str, list] = {name: [] for name in cases}
    for r in range(rounds):
        for name in (list(cases) if r % 2 == 0 else list(reversed(cases))):
            out[name].append(cases[name]())
    return out


# --------------------------------------------------------------------------- 1. no-op stages

_NOOP_FRAMES = np.zeros((1, 8, 8, 3), np.uint8)


def _identity(x):
    return x


def bare_noop(steps: int) -> float:
    """µs per step of the bare loop: read, prep, model step, device sync."""
    src, runner = MemorySource(_NOOP_FRAMES), NoopRunner()
    t0 = time.perf_counter()
    for _ in range(steps):
        b = src.read(1)
        x = _identity(b.frames)
        runner.step(x)
        runner.synchronize()
    return (time.perf_counter() - t0) / steps * 1e6


def engine_noop(steps: int, pipeline: str = "serial") -> float:
    """µs per step of ``StreamWorker`` on the same no-op stages, every row recorded and
    flushed to an emitter that keeps the batches."""
    batches = []
    w = StreamWorker(replace(plan(1, steps), pipeline=pipeline), batches.append, pin=False,
                     source_factory=lambda p: MemorySource(_NOOP_FRAMES), prep_factory=lambda p: _identity,
                     runner_factory=lambda p: NoopRunner())
    w.setup()
    t0 = time.perf_counter()
    res = w.run()
    us = (time.perf_counter() - t0) / steps * 1e6
    assert res.steps == steps and sum(b.num_rows for b in batches) == steps, res
    return us


def noop_overhead(steps: int, rounds: int) -> dict[str, dict]:
    """Per case, µs per step of its fastest and of its median round. The overlap worker runs a
    tenth of the steps a round (each waits for a thread hand-off)."""
    runs = interleaved({"bare": lambda: bare_noop(steps), "serial": lambda: engine_noop(steps),
                        "overlap": lambda: engine_noop(steps // 10, "overlap")}, rounds)
    return {name: {"min": min(r), "median": statistics.median(r)} for name, r in runs.items()}


def mark_ns(n: int = 2_000, rounds: int = 101) -> float:
    """One ``with mark(...)`` with nothing attached: the fastest of ``rounds`` loops of ``n``."""

    def loop() -> float:
        t0 = time.perf_counter()
        for i in range(n):
            with mark("exec", i):
                pass
        return (time.perf_counter() - t0) / n * 1e9

    return min(loop() for _ in range(rounds))


# --------------------------------------------------------------------------- 3. a real model


def model_ratio(model: str, batch: int, steps: int, rounds: int) -> dict:
    """bare ÷ rayprof on one model, from ``rounds`` interleaved rounds of ``steps`` steps each (a
    step: from one ``read`` to the next). ``ratio``: the median over pairs of rounds of bare's
    median step ÷ rayprof's, with the quartiles of those pair ratios; ``fastest_ratio``: of the
    fastest steps of all rounds."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(64, 240, 320, 3), dtype=np.uint8)
    prep = Preprocessor("simple", "cpu", size=224)
    runner = ModelRunner(model, mode="inference", device="cpu")
    for _ in range(3):  # warm both paths' caches
        runner.step(prep(frames[:batch]))

    def bare() -> np.ndarray:
        stamps: list[float] = []
        src = MemorySource(frames, stamps)
        for _ in range(steps):
            b = src.read(batch)
            x = prep(b.frames)
            with torch.inference_mode():
                runner.module(x)
        src.read(batch)
        return np.diff(stamps)

    def engine() -> np.ndarray:
        stamps: list[float] = []
        w = StreamWorker(plan(batch, steps + 1, model), lambda b: None, pin=False,
                         source_factory=lambda p: MemorySource(frames, stamps), prep_factory=lambda p: prep,
                         runner_factory=lambda p: runner)
        w.setup()
        res = w.run()
        assert res.steps == steps + 1
        return np.diff(stamps)

    runs = interleaved({"bare": bare, "rayprof": engine}, rounds)
    pairs = [np.median(b) / np.median(e) for b, e in zip(runs["bare"], runs["rayprof"])]
    q25, ratio, q75 = np.percentile(pairs, [25, 50, 75])
    b_ms, e_ms = (float(np.median(np.concatenate(runs[k]))) * 1e3 for k in ("bare", "rayprof"))
    b_min, e_min = (min(r.min() for r in runs[k]) for k in ("bare", "rayprof"))
    return {"model": model, "batch": batch, "steps": steps, "rounds": rounds, "bare_ms": b_ms, "rayprof_ms": e_ms,
            "ratio": float(ratio), "q25": float(q25), "q75": float(q75), "fastest_ratio": float(b_min / e_min)}


# --------------------------------------------------------------------------- the page


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mobilenet_v3_small")
    ap.add_argument("--steps", type=int, default=5, help="model steps a round at batch 8 (×4 at batch 1)")
    ap.add_argument("--rounds", type=int, default=101, help="interleaved rounds of every comparison")
    ap.add_argument("--noop-steps", type=int, default=2_000, help="no-op steps a round")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (see RESULTS.md)")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    noop = noop_overhead(args.noop_steps, args.rounds)
    m_ns = mark_ns()
    ratios = [model_ratio(args.model, b, args.steps if b == 8 else args.steps * 4, args.rounds) for b in (1, 8)]
    text = page(args, noop, m_ns, ratios)
    print(text)
    if not args.no_write:
        write_section(ROOT / "benchmarks" / "RESULTS.md", "## Instrumentation overhead", text)


def page(args: argparse.Namespace, noop: dict[str, dict], m_ns: float, ratios: list[dict]) -> str:
    """The results page's section."""
    bare, serial, overlap = noop["bare"], noop["serial"], noop["overlap"]
    cost = serial["min"] - bare["min"]
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    lines = [
        "## Instrumentation overhead (`benchmarks/instrumentation_overhead.py`)",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, CPU only, shared "
        f"(load average {load} at the end); torch {torch.__version__} with {args.threads} thread(s), "
        f"rayprof {__version__}, Python {platform.python_version()}; {time.strftime('%Y-%m-%d')}.",
        f"Reproduce: `python benchmarks/instrumentation_overhead.py --model {args.model} --steps {args.steps} "
        f"--rounds {args.rounds} --noop-steps {args.noop_steps} --threads {args.threads}`",
        "",
        f"No-op stages: {args.rounds} interleaved rounds of {args.noop_steps:,} steps "
        f"({args.noop_steps // 10:,} in overlap); µs per step.",
        "",
        "| measure | fastest round | median round |",
        "|---|---|---|",
        f"| bare loop | {bare['min']:.2f} | {bare['median']:.2f} |",
        f"| `StreamWorker`, `pipeline: serial` | {serial['min']:.2f} | {serial['median']:.2f} |",
        f"| **instrumentation per step** (marks, timer, row, flush; goal ≤ {GOAL_US:g} µs) | **{cost:.2f}** | "
        f"{serial['median'] - bare['median']:.2f} |",
        f"| `StreamWorker`, `pipeline: overlap` (for information) | {overlap['min']:.1f} | {overlap['median']:.1f} |",
        f"| the prefetch hand-off per step (overlap − serial) | {overlap['min'] - serial['min']:.1f} | "
        f"{overlap['median'] - serial['median']:.1f} |",
        f"| one `with mark(...)`, no profiler attached | {m_ns / 1e3:.2f} | |",
        "",
        f"A real model: {args.rounds} interleaved rounds (prep → forward under `inference_mode`); a step is "
        "the time from one `read` to the next.",
        "",
        "| model | batch | steps × rounds | bare: median step, FPS | rayprof: median step, FPS "
        f"| **ratio** (goal ≥ {GOAL_RATIO}) | pair ratios' quartiles | ratio of fastest steps "
        "| expected from the no-op cost |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in ratios:
        expected = r["bare_ms"] / (r["bare_ms"] + cost / 1e3)
        lines.append(f"| {r['model']} | {r['batch']} | {r['steps']} × {r['rounds']} | {r['bare_ms']:.2f} ms, "
                     f"{r['batch'] / r['bare_ms'] * 1e3:.1f} | {r['rayprof_ms']:.2f} ms, "
                     f"{r['batch'] / r['rayprof_ms'] * 1e3:.1f} | **{r['ratio']:.3f}** | {r['q25']:.3f}–{r['q75']:.3f} "
                     f"| {r['fastest_ratio']:.3f} | {expected:.4f} |")
    lines += ["", *prose(cost, ratios), ""]
    return "\n".join(lines)


def prose(cost: float, ratios: list[dict]) -> list[str]:
    """What the tables say, and why they are measured this way."""
    verdict = "met" if cost <= GOAL_US else f"missed by {cost - GOAL_US:.2f} µs"
    worst = min(ratios, key=lambda r: r["ratio"])
    return [
        f"**Instrumentation: {cost:.2f} µs per step** (goal ≤ {GOAL_US:g} µs: {verdict}); it was 12.82 µs before "
        "the per-step path was cut down: `mark()` returns one shared do-nothing range when no NVTX tool is "
        "attached and no torch profiler records (no object, no NVTX call), a step's row is one tuple appended "
        "to a list (not a dataclass copied into 13 column lists; the identity columns are built at flush time "
        "with `pa.repeat`), and a batch's frame count is read once. Counted with callgrind (instructions do not "
        "depend on the machine's load), what the engine adds to a no-op step went from 59,400 to 39,200 "
        "instructions. What is left is the four ranges (`step`, `read`, `prep`, `exec`; about a third), the "
        "stage timer's clock reads, the staged batch, the row and the flush check: plain Python calls of a "
        "few hundred nanoseconds each.",
        "",
        "Why the fastest round: on this shared VM other jobs (here and on the host) only ever add time, and they "
        "come and go within seconds. Many short interleaved rounds give each case quiet moments, and the "
        "difference of the fastest rounds repeated within ±0.3 µs over four runs, where 11 rounds of 20,000 "
        "steps moved by up to 3 µs (medians move with the load; they are shown for that). CPU time is no steadier "
        "than wall time here: the host's contention is counted as the VM's CPU time.",
        "",
        "The overlap row is for information: with no work to hide it behind, each step waits for two thread "
        "wake-ups (the worker for its batch, the prefetch thread for room). With a real model the next batch "
        "is ready when the worker asks, so the worker's thread pays a lock and a notify "
        "(see the pipelined mode's section).",
        "",
        f"**Throughput ratio: {worst['ratio']:.3f} at worst in this run** (goal ≥ {GOAL_RATIO}). The ratio is "
        "the median over the pairs of neighbouring rounds of bare's median step ÷ rayprof's, so a slow stretch "
        "of the machine falls on both sides of a pair; the quartiles of the pair ratios show the noise. On this "
        "VM the same model step varies by up to 30 % between minutes and by ±5 % between neighbouring rounds, "
        "so one run's ratio lands within about ±3 % of the truth whichever statistic is taken (the median of "
        "pairs, pooled medians, low percentiles or the fastest steps, compared over repeated runs); it cannot "
        "resolve the 0.1 % that the no-op cost predicts (last column: bare step ÷ (bare step + the "
        "instrumentation above)). `ModelRunner.step`'s own wrapper (a range, the autocast and device checks) "
        "is in the measured ratio and not in that column. torch runs one thread: with two threads on two "
        "shared cores OpenMP's barriers make every step wait for the slower core, and a run took several "
        "times as long (one had not finished after 7 minutes).",
    ]


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
