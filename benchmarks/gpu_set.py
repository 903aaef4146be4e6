"""The GPU set: GPU options against each other, measured with the engine side by side in one run.

``StreamWorker`` (no Ray) runs resnet50 at batch 64 on frames already decoded in memory (640×360
RGB, the sample video's size: reading costs only the batch copy, so what differs is prep and
exec), in six cases:

1. preprocessing on the CPU, FP32, eager (the reference);
2. preprocessing on the GPU, FP32, eager (CPU vs GPU preprocessing: 2 against 1);
3. GPU preprocessing, AMP (fp16 autocast) (AMP vs FP32: 3 against 2);
4. GPU preprocessing, AMP, ``torch.compile`` (compile vs eager: 4 against 3);
5. the split model in one process (``SplitRunner``): the head, up to ``--split``, on the CPU and the
   tail on the GPU, the activation copied between them (``transfer_ms``) (against 1);
6. case 3 with ``pipeline: overlap``: the next batch read and prepped (pinned memory, a side CUDA
   stream) while the model runs (against 3; ``wait_ms``: the model waiting for its input).

Each case's preprocessor and model are built once; every round runs each case's worker for
``--steps`` steps, ``--warmup`` of them flagged warm-up and left out (compilation, cuDNN's
algorithm search), interleaved case by case; the median step is shown. Stage times are
CUDA-correct (the worker synchronizes before it reads the clock).

The numbers mean something on a GPU only. ``--device cpu --quick`` runs every code path on the
CPU (resnet18, a small batch and input, few steps, AMP as bfloat16) as a smoke check and does not
write the results page. Without CUDA (and without ``--device cpu``) it says so and exits 0.

    python benchmarks/gpu_set.py [--model resnet50] [--batch 64] [--split layer1] [--steps 20] [--rounds 3]
    python benchmarks/gpu_set.py --device cpu --quick

Prints a table and rewrites its section of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from instrumentation_overhead import MemorySource, write_section  # noqa: E402

from rayprof import __version__  # noqa: E402
from rayprof.model import ModelRunner  # noqa: E402
from rayprof.pair import SplitRunner  # noqa: E402
from rayprof.prep import Preprocessor  # noqa: E402
from rayprof.worker import StreamWorker  # noqa: E402
from tests.unit.fakes import make_plan  # noqa: E402

STAGES = ("read", "prep", "wait", "exec", "transfer", "total")
QUICK = dict(model="resnet18", batch=4, size=112, split="layer1", steps=4, warmup=2, rounds=1)


def cases(device: str, split: str) -> dict[str, dict]:
    """Case label → the plan fields it sets (the rest: FP32, eager, the model on ``device``)."""
    return {
        "prep CPU, FP32, eager": dict(prep_device="cpu"),
        f"prep {device}, FP32, eager": dict(prep_device=device),
        f"prep {device}, AMP, eager": dict(prep_device=device, amp=True),
        f"prep {device}, AMP, compile": dict(prep_device=device, amp=True, compile=True),
        f"split: head to {split} on CPU, tail on {device}, prep CPU, FP32":
            dict(prep_device="cpu", role="split", split_point=split, head_device="cpu"),
        f"prep {device}, AMP, eager, pipeline overlap": dict(prep_device=device, amp=True, pipeline="overlap"),
    }


def runner_for(plan):
    """The plan's model as the worker builds it: whole, or both halves in this process."""
    if plan.role == "split":
        return SplitRunner(plan, time.perf_counter)
    return ModelRunner(plan.model, mode=plan.mode, device=plan.exec_device, compile=plan.compile, amp=plan.amp,
                       seed=plan.seed)


class Case:
    """One case's plan, preprocessor and model, built once and run round after round."""

    def __init__(self, plan, frames: np.ndarray):
        self.plan, self.frames = plan, frames
        self.prep = Preprocessor(plan.prep_level, plan.prep_device, size=plan.prep_size)
        self.runner = runner_for(plan)
        self.rows: list[dict] = []

    def run(self) -> None:
        """One worker run; its measured (not warm-up) rows are kept."""
        batches: list[pa.RecordBatch] = []
        w = StreamWorker(self.plan, batches.append, pin=False, source_factory=lambda p: MemorySource(self.frames),
                         prep_factory=lambda p: self.prep, runner_factory=lambda p: self.runner)
        res = w.run()
        assert res.status == "completed", res.error
        self.rows += [r for r in pa.Table.from_batches(batches).to_pylist() if not r["warmup"]]

    def medians(self) -> dict[str, float | None]:
        out = {}
        for s in STAGES:
            values = [r[f"{s}_ms"] for r in self.rows if r[f"{s}_ms"] is not None]
            out[s] = statistics.median(values) if values else None
        out["fps"] = self.plan.batch_size / out["total"] * 1e3
        return out


def machine(device: str) -> str:
    cpu = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda}), {cpu}"
    return f"{cpu}, no GPU: a smoke check of the code paths, not a measurement"


def report(args, results: dict[str, dict]) -> str:
    labels = list(results)
    ref, gpu_prep, amp, compiled, split, overlap = labels

    def speedup(a: str, b: str) -> str:
        return f"×{results[a]['fps'] / results[b]['fps']:.2f}"

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    lines = [
        "## GPU set (`benchmarks/gpu_set.py`)",
        "",
        f"Machine: {machine(args.device)}; torch {torch.__version__}, rayprof {__version__}, "
        f"Python {platform.python_version()}; {time.strftime('%Y-%m-%d')}.",
        f"Reproduce: `python benchmarks/gpu_set.py --device {args.device} --model {args.model} --batch {args.batch} "
        f"--size {args.size} --split {args.split} --steps {args.steps} --warmup {args.warmup} --rounds {args.rounds}`",
        "",
        f"{args.model}, batch {args.batch}, inference, frames in memory (640×360 RGB), prep `simple` to "
        f"{args.size} px; {args.steps} steps per run ({args.warmup} warm-up, left out), the median step of "
        f"{args.rounds} interleaved rounds.",
        "",
        "| case | FPS | read ms | prep ms | wait ms | exec ms | transfer ms | step ms |",
        "|---|---|---|---|---|---|---|---|",
        *(f"| {label} | **{r['fps']:.1f}** | " + " | ".join(ms(r[s]) for s in STAGES) + " |"
          for label, r in results.items()),
        "",
        f"- CPU vs {args.device} preprocessing: {speedup(gpu_prep, ref)} FPS with prep on the {args.device}.",
        f"- AMP vs FP32: {speedup(amp, gpu_prep)}.",
        f"- torch.compile vs eager (both AMP): {speedup(compiled, amp)}.",
        f"- the split model (head on the CPU) vs the whole model on the {args.device}: {speedup(split, ref)}; "
        "its exec is the head and the tail, its transfer the copy of the activation to the tail's device.",
        f"- pipeline overlap vs serial (both AMP, prep on the {args.device}): {speedup(overlap, amp)}; in overlap "
        "read and prep ran during the previous step, and a step is wait + exec.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="where the model runs (cuda, cuda:N, or cpu for a smoke check)")
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--size", type=int, default=224, help="the model's input size (prep output)")
    ap.add_argument("--split", default="layer1", help="the split case's head ends with this module")
    ap.add_argument("--steps", type=int, default=20, help="steps per run, warm-up included")
    ap.add_argument("--warmup", type=int, default=5, help="warm-up steps per run, left out")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of every case, interleaved; the median is shown")
    ap.add_argument("--quick", action="store_true", help="a smoke check: " + ", ".join(
        f"{k} {v}" for k, v in QUICK.items()) + "; does not write the results page")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    if args.quick:
        vars(args).update(QUICK)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_set: skipped, no CUDA GPU here (torch.cuda.is_available() is False); "
              "run `python benchmarks/gpu_set.py --device cpu --quick` for a smoke check on the CPU")
        return

    torch.manual_seed(0)
    frames = np.random.default_rng(0).integers(0, 256, size=(args.batch, 360, 640, 3), dtype=np.uint8)
    todo = {label: Case(make_plan(model=args.model, batch_size=args.batch, prep_size=args.size,
                                  exec_device=args.device, cores=(), cores_spec="all", max_steps=args.steps,
                                  warmup_steps=args.warmup, **fields), frames)
            for label, fields in cases(args.device, args.split).items()}
    for n in range(args.rounds):
        for label, case in todo.items():
            case.run()
            print(f"round {n}  {label:<60} {case.medians()['fps']:8.1f} FPS so far", flush=True)
    text = report(args, {label: case.medians() for label, case in todo.items()})
    print(text)
    if not (args.no_write or args.quick):
        write_section(ROOT / "benchmarks" / "RESULTS.md", "## GPU set", text)


if __name__ == "__main__":
    main()
