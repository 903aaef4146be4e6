"""Aggregate throughput of N actors against N × one actor, with rayprof itself, in one run.

Two settings, each actor on a core of its own:

1. one node: a local Ray of this machine (``ray.init(num_cpus=cores)``); one worker with N
   replicas (N = 1 pinned to core 0, N ≥ 2 with ``cores: auto``, which gives each its own core);
2. a simulated multi-node cluster: ``cluster/local_cluster.sh start N`` (nodes of 1 CPU, each
   on a core of its own through taskset, as separate machines would be), the N replicas spread
   one per node (``spread: true``). Skipped, with the reason, where it cannot start.

Every run is ``rayprof.fleet.submit`` on a job spec written to a temp dir (mobilenet_v3_small,
batch 8, inference, the sample video looped, a short run). Its throughput is the dataset's FPS
while all of its actors ran (``rayprof.metrics.concurrent_fps``, warm-up steps left out), so the
seconds a worker process takes to start do not count. Efficiency = FPS(N) / (N × FPS(1)), from
the medians of interleaved rounds (N = 1, 2, 1, 2, ...). Goal (issue 8): ≥ 0.9.

    python benchmarks/scaling.py [--actors 1,2] [--steps 40] [--rounds 3] [--no-cluster]

Prints a table and rewrites its section of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import multiprocessing
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest
import ray
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from instrumentation_overhead import write_section  # noqa: E402

from rayprof import __version__  # noqa: E402
from rayprof.fleet import submit  # noqa: E402
from rayprof.metrics import concurrent_fps  # noqa: E402
from rayprof.sink import list_runs, read_table  # noqa: E402
from rayprof.spec import load_fleet  # noqa: E402
from tests.support.local_cluster import SCRIPT, cluster_env  # noqa: E402

GOAL = 0.9
MODEL, BATCH = "mobilenet_v3_small", 8


def job(replicas: int, cores: str, spread: bool, steps: int) -> dict:
    """The job spec of one run: one worker, ``replicas`` actors."""
    return {"run": f"scaling-{replicas}", "workers": [{
        "name": f"mnv3-b{BATCH}", "source": {"uri": "sample", "loop": True}, "model": MODEL, "batch_size": BATCH,
        "device": "cpu", "replicas": replicas, "cores": cores, "spread": spread, "max_steps": steps,
        "warmup_steps": 5}]}


def run_job(spec: dict, folder: Path) -> dict:
    """Write ``spec`` into ``folder``, submit it to the connected Ray, read its dataset back."""
    folder.mkdir(parents=True)
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    log = io.StringIO()
    with contextlib.redirect_stdout(log):  # progress lines and the summary table
        code = submit(load_fleet(path, output=str(folder / "runs")))
    if code != 0:
        raise RuntimeError(f"rayprof submit exited {code}:\n{log.getvalue()[-3000:]}")
    root = folder / "runs"
    rows = read_table(root, list_runs(root)[-1]).to_pandas()
    rows = rows[~rows["warmup"].astype(bool)]
    return {"fps": concurrent_fps(rows), "step_ms": float(rows["total_ms"].median()), "actors": rows["actor_id"].nunique(),
            "cores": sorted(set(rows["cores"])), "nodes": rows["node_id"].nunique()}


def one_node(counts: list[int], steps: int, rounds: int, tmp: Path) -> dict[int, list[dict]]:
    """Each N's runs on a local Ray of this machine's cores (one actor: on the first core)."""
    first = str(min(os.sched_getaffinity(0)))
    ray.init(address="local", num_cpus=len(os.sched_getaffinity(0)), include_dashboard=False,
             logging_level="ERROR", log_to_driver=False)
    try:
        return rounds_of(counts, rounds, lambda n, r: run_job(
            job(n, first if n == 1 else "auto", spread=False, steps=steps), tmp / f"node-{n}-{r}"))
    finally:
        ray.shutdown()


def cluster(counts: list[int], steps: int, rounds: int, tmp: Path) -> dict[int, list[dict]]:
    """Each N's runs on a local rehearsal cluster of max(N) one-CPU nodes."""
    with cluster_env() as (env, port, _state, _sids):
        env = {**env, "PYTHONPATH": os.environ["PYTHONPATH"]}
        start = subprocess.run(["bash", str(SCRIPT), "start", str(max(counts)), "--num-cpus", "1",
                                "--object-store-mb", "200"], env=env, capture_output=True, text=True, timeout=180)
        if start.returncode != 0:
            raise RuntimeError((start.stderr.strip() or start.stdout.strip()).splitlines()[-1])
        ray.init(address=f"127.0.0.1:{port}", logging_level="ERROR", log_to_driver=False)
        try:
            return rounds_of(counts, rounds, lambda n, r: run_job(
                job(n, "auto", spread=True, steps=steps), tmp / f"cluster-{n}-{r}"))
        finally:
            ray.shutdown()


def in_own_process(setting, *args) -> dict[int, list[dict]]:
    """``setting(*args)`` in a fresh process: a Ray session leaves state behind in its process
    (after a local Ray, actors on another cluster die at once), so each setting gets its own."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(setting, *args).result()


def rounds_of(counts: list[int], rounds: int, run) -> dict[int, list[dict]]:
    """``run(n, round)`` for every N, round after round (interleaved), with the load average after each."""
    out: dict[int, list[dict]] = {n: [] for n in counts}
    for r in range(rounds):
        for n in counts:
            res = {**run(n, r), "load": os.getloadavg()[0]}
            out[n].append(res)
            print(f"round {r}  {n} actor(s) on {res['nodes']} node(s), cores {','.join(res['cores'])}: "
                  f"{res['fps']:.1f} FPS", flush=True)
    return out


def table_rows(setting: str, runs: dict[int, list[dict]]) -> list[str]:
    base = statistics.median(r["fps"] for r in runs[1])
    lines = []
    for n, rs in runs.items():
        fps = statistics.median(r["fps"] for r in rs)
        per_round = ", ".join(f"{r['fps'] / (n * base):.2f}" for r in rs)
        step = statistics.median(r["step_ms"] for r in rs)
        lines.append(f"| {setting} | {n} | {rs[0]['nodes']} | {' / '.join(rs[0]['cores'])} | {step:.1f} | {fps:.1f} | "
                     f"{n * base:.1f} | **{fps / (n * base):.2f}** | {per_round} |")
    return lines


def slowdown(setting: str, runs: dict[int, list[dict]]) -> str:
    """How much longer an actor's median step is with the most actors than alone."""
    n = max(runs)
    step = {k: statistics.median(r["step_ms"] for r in runs[k]) for k in (1, n)}
    return f"×{step[n] / step[1]:.2f} with {n} actors ({setting})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--actors", default="1,2", help="actor counts N, comma-separated (at most one per core)")
    ap.add_argument("--steps", type=int, default=40, help="steps per actor (5 of them warm-up)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of every N, interleaved; the median is shown")
    ap.add_argument("--no-cluster", action="store_true", help="one node only")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    counts = sorted({int(n) for n in args.actors.split(",")} | {1})
    cores = len(os.sched_getaffinity(0))
    if max(counts) > cores:
        ap.error(f"--actors: at most {cores} here, one per core")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))  # workers

    tmp = Path(tempfile.mkdtemp(prefix="rayprof-scaling-bench-"))
    try:
        results = {"one node, local Ray": in_own_process(one_node, counts, args.steps, args.rounds, tmp)}
        cluster_note = "--no-cluster: not run"
        if not args.no_cluster:
            try:
                results[f"local cluster, {max(counts)} nodes"] = in_own_process(cluster, counts, args.steps, args.rounds, tmp)
                cluster_note = None
            except (Exception, pytest.skip.Exception) as e:  # noqa: BLE001 - said on the results page
                cluster_note = f"the local cluster could not run here: {type(e).__name__}: {e}"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    loads = [r["load"] for runs in results.values() for rs in runs.values() for r in rs]
    lines = [
        "## Scaling (`benchmarks/scaling.py`)",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {cores} cores, shared: load average "
        f"{min(loads):.1f}-{max(loads):.1f} from other jobs during the runs; ray {ray.__version__}, "
        f"rayprof {__version__}, Python {platform.python_version()}; {time.strftime('%Y-%m-%d')}.",
        f"Reproduce: `python benchmarks/scaling.py --actors {args.actors} --steps {args.steps} --rounds {args.rounds}"
        f"{' --no-cluster' if args.no_cluster else ''}`",
        "",
        f"{MODEL}, batch {BATCH}, inference on CPU, the sample video (640×360) looped; {args.steps} steps per actor "
        f"(5 warm-up, left out); one core per actor; the median of {args.rounds} interleaved rounds. FPS is the "
        "fleet's while all of its actors ran (`concurrent_fps`).",
        "",
        "| setting | actors N | nodes | cores per actor | median step ms | FPS, all running | N × FPS(1) | efficiency "
        "| per round |",
        "|---|---|---|---|---|---|---|---|---|",
        *(row for setting, runs in results.items() for row in table_rows(setting, runs)),
        "",
        f"Goal (issue 8): efficiency ≥ {GOAL}. An actor's median step, against the same actor alone: "
        + ", ".join(slowdown(setting, runs) for setting, runs in results.items()) + ". FPS counts every step, so a slow step (another job took the core) weighs in it; the median step does "
        "not. The nodes of the local cluster are Ray nodes on this machine, each "
        "on a core of its own; they share its memory bandwidth and caches, and the driver, the sink actor and "
        "Ray's own processes share the same cores, as do the other jobs on this machine: with N = 1 they have "
        "a free core, with one actor per core they do not.",
    ]
    if cluster_note:
        lines += ["", f"Multi-node: {cluster_note}."]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        write_section(ROOT / "benchmarks" / "RESULTS.md", "## Scaling", text)


if __name__ == "__main__":
    main()
