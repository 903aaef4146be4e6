"""Start-up: from ``rayprof submit`` to the first step, on an embedded local Ray.

Each run is a fresh ``python -m rayprof.cli submit SPEC`` process (a new interpreter and a new
embedded Ray, as a user gets them), timed from the moment it is spawned:

- **first step**: the earliest ``t_start`` among the run's rows (the wall clock at which the first
  step of any actor began);
- **every actor stepping**: the latest of the actors' first ``t_start``;
- **exit**: the process has ended (run, summary table, Ray shut down).

Two jobs: ``fleet`` is ``jobs/fleet.yaml`` (five actors) cut to a few steps with ``--set``; ``one``
is a single resnet18 actor on the same sample video. The breakdown comes from the manifest
(``timings``: Ray ready, actors created; per actor ``setup_s`` and ``first_step_s``) and from the
CPU time of the process tree, read from ``/proc`` every 0.1 s and summed per kind of process up
to the first step. On a machine with few cores that sum bounds the start-up: N cores cannot do
it faster than CPU-seconds / N. The cost of the pieces, each in a fresh process, is listed too.
The sample video is generated once before the first run (it is cached, as after any first use).

    python benchmarks/startup.py [--runs 3] [--jobs fleet,one]

Prints the numbers and rewrites its section of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from instrumentation_overhead import write_section  # noqa: E402

GOAL_S = 10.0
STEPS = ["--set", "defaults.max_steps=3", "--set", "defaults.warmup_steps=1"]
ONE_ACTOR = """run: startup-one
defaults: {source: {uri: sample, loop: true}, device: auto, prep: simple}
workers:
  - {name: resnet18-b8, model: resnet18, batch_size: 8}
"""
#: what each process of the tree is, by its command line (first match wins)
KINDS = [("ray::SinkActor", "sink actor"), ("ray::WorkerActor", "worker actors"), ("ray::TailActor", "worker actors"),
         ("ray::Graceful", "worker actors"),  # their class's name before 0.1.0's torch-free driver (--baseline) ("default_worker", "worker actors"),
         ("ray::IDLE", "worker actors"), ("rayprof.cli", "driver (rayprof submit)"), ("", "Ray's own processes")]
KIND_NAMES = list(dict.fromkeys(name for _, name in KINDS))
TORCH_PIECE = "`import torch, torchvision` (every worker actor)"
PIECES = {  # what a fresh process pays, in CPU-seconds
    "interpreter + `import rayprof.cli`": "import rayprof.cli",
    "`import ray`": "import ray",
    "`import torch`": "import torch",
    TORCH_PIECE: "import torch, torchvision",
    "`import rayprof.fleet._run` (the driver's modules)": "import rayprof.fleet._run",
}
BUILD = ("import json, time; from rayprof.model import build_model; out = {}\n"
         "for name, mode, n in [('resnet18', 'inference', None), ('mobilenet_v3_small', 'inference', None), "
         "('resnet18', 'retrain', 10)]:\n"
         "    t = time.process_time(); build_model(name, mode=mode, num_classes=n)\n"
         "    out[f'{name} {mode}'] = time.process_time() - t\n"
         "print(json.dumps(out))")


def med(values) -> float:
    return statistics.median(values)


def env(root: Path = ROOT) -> dict:
    path = os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}


# --------------------------------------------------------------------------- CPU time from /proc


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = defaultdict(list)
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                ppid = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids[ppid].append(int(d))
    return kids


def tree_cpu(root: int) -> dict[int, tuple[float, str]]:
    """{pid: (user+system CPU-seconds, command line)} of ``root`` and its descendants."""
    kids, out, todo = _children(), {}, [root]
    hz = os.sysconf("SC_CLK_TCK")
    while todo:
        pid = todo.pop()
        todo.extend(kids.get(pid, []))
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        out[pid] = ((int(fields[11]) + int(fields[12])) / hz, cmd)
    return out


def kind(cmd: str) -> str:
    return next(name for needle, name in KINDS if needle in cmd)


def cpu_by_kind(samples: list[tuple[float, dict]], until: float) -> dict[str, float]:
    """CPU-seconds per kind of process, as last sampled at or before ``until`` (seconds since spawn).
    A process keeps the kind its latest non-empty command line says (a worker becomes an actor)."""
    last: dict[int, tuple[float, str]] = {}
    for t, sample in samples:
        if t > until:
            break
        for pid, (cpu, cmd) in sample.items():
            last[pid] = (cpu, cmd.strip() or last.get(pid, (0.0, ""))[1])
    out: dict[str, float] = defaultdict(float)
    for cpu, cmd in last.values():
        out[kind(cmd)] += cpu
    return dict(out)


# --------------------------------------------------------------------------- one run


def submit_once(spec: Path, out: Path, root: Path = ROOT) -> dict:
    """Spawn ``rayprof submit`` of the checkout ``root``, sample its CPU, and read what its run recorded."""
    cmd = [sys.executable, "-m", "rayprof.cli", "submit", str(spec), "--output", str(out), *STEPS]
    t0 = time.time()
    proc = subprocess.Popen(cmd, cwd=root, env=env(root), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    samples = []
    while proc.poll() is None:
        samples.append((time.time() - t0, tree_cpu(proc.pid)))
        time.sleep(0.1)
    exit_s = time.time() - t0
    text = proc.stdout.read()
    if proc.returncode != 0:
        raise SystemExit(f"rayprof submit exited {proc.returncode}:\n{text[-3000:]}")
    (run_dir,) = out.glob("run=*")
    man = json.loads((run_dir / "_manifest.json").read_text())
    timings, actors = man["timings"], man["actors"].values()
    entered = datetime.fromisoformat(timings["submitted_at"]).timestamp() - t0
    firsts = [entered + a["first_step_s"] for a in actors]
    return {
        "submit entered": entered,
        "Ray ready": entered + timings["ray_ready_s"],
        "actors created": entered + timings["actors_created_s"],
        "first actor set up": min(entered + a["first_step_s"] - a["setup_s"] for a in actors),
        "first step": min(firsts),
        "every actor stepping": max(firsts),
        "exit": exit_s,
        "setup": med([a["setup_s"] for a in actors]),
        "cpu": cpu_by_kind(samples, min(firsts)),
        "load": os.getloadavg()[0],
    }


def piece_costs(rounds: int) -> dict[str, float]:
    """Median CPU-seconds of each piece in a fresh process (children included)."""
    out = {}
    for name, code in PIECES.items():
        runs = []
        for _ in range(rounds):
            before = os.times()
            subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env(), check=True)
            after = os.times()
            runs.append(after.children_user + after.children_system - before.children_user - before.children_system)
        out[name] = statistics.median(runs)
    builds = json.loads(subprocess.run([sys.executable, "-c", BUILD], cwd=ROOT, env=env(), check=True,
                                       capture_output=True, text=True).stdout)
    out.update({f"model build, weights=None: {k}": v for k, v in builds.items()})
    return out


# --------------------------------------------------------------------------- report


PHASES = ["submit entered", "Ray ready", "actors created", "first actor set up", "first step", "every actor stepping",
          "exit", "setup"]
PHASE_TEXT = {
    "submit entered": "`fleet.submit` called: interpreter, CLI, spec loaded",
    "Ray ready": "embedded Ray started, local checks passed (they run meanwhile)",
    "actors created": "sink and worker actors asked for",
    "first actor set up": "first worker actor's process up, rayprof and torch imported: its `setup()` begins",
    "first step": "**first step** (the earliest `t_start`)",
    "every actor stepping": "every actor has begun its first step",
    "exit": "process exit (after the run, the summary and Ray's shutdown)",
    "setup": "an actor's `setup()`: torchvision import, prep, model build, source open (s, not a time point)",
}


def report(results: dict[str, list[dict]], pieces: dict[str, float], args,
           base: dict[str, list[dict]] | None = None) -> str:
    import ray
    import torch

    from rayprof import __version__

    jobs = list(results)
    lines = [
        "## Start-up (`benchmarks/startup.py`)",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, CPU only, shared with other "
        f"jobs (load average {med([r['load'] for rs in results.values() for r in rs]):.1f} during the runs); "
        f"torch {torch.__version__}, ray {ray.__version__}, rayprof {__version__}, Python "
        f"{platform.python_version()}; {time.strftime('%Y-%m-%d')}.",
        f"Reproduce: `python benchmarks/startup.py --runs {args.runs} --jobs {args.jobs}"
        + (f" --baseline CHECKOUT` (CHECKOUT: `git worktree add CHECKOUT {args.baseline_rev}`)" if args.baseline else "`"),
        "",
        "Seconds since `rayprof submit` was spawned, the median of "
        f"{args.runs} fresh processes per job (`fleet`: jobs/fleet.yaml, 5 actors; `one`: one resnet18 actor). "
        f"Goal (issue 8): first step < {GOAL_S:g} s.",
        "",
        "| phase | " + " | ".join(jobs) + " |",
        "|---|" + "---|" * len(jobs),
    ]
    for phase in PHASES:
        lines.append(f"| {PHASE_TEXT[phase]} | " + " | ".join(f"{med([r[phase] for r in results[j]]):.1f}"
                                                           for j in jobs) + " |")
    lines.append("| goal met (first step < 10 s) | " + " | ".join(
        "yes" if med([r["first step"] for r in results[j]]) < GOAL_S else
        f"no: {med([r['first step'] for r in results[j]]) - GOAL_S:+.1f} s" for j in jobs) + " |")
    cpu = {j: {k: med([r["cpu"].get(k, 0.0) for r in results[j]]) for k in KIND_NAMES} for j in jobs}
    total = {j: med([sum(r["cpu"].values()) for r in results[j]]) for j in jobs}
    cores = os.cpu_count()
    if base:
        lines += baseline_table(results, base, args.baseline_rev)
    lines += ["", "CPU-seconds spent up to the first step, per kind of process (median):", "",
              "| process | " + " | ".join(jobs) + " |", "|---|" + "---|" * len(jobs)]
    lines += [f"| {k} | " + " | ".join(f"{cpu[j][k]:.1f}" for j in jobs) + " |" for k in KIND_NAMES]
    lines.append("| total | " + " | ".join(f"{total[j]:.1f}" for j in jobs) + " |")
    lines.append(f"| lower bound on {cores} idle cores: total / {cores} (s) | "
                 + " | ".join(f"{total[j] / cores:.1f}" for j in jobs) + " |")
    lines += ["", "The pieces, each in a fresh process (CPU-seconds, median of 3):", "", "| piece | CPU-s |", "|---|---|"]
    lines += [f"| {name} | {c:.2f} |" for name, c in pieces.items()]
    stack = pieces[TORCH_PIECE]
    lines += ["", f"Where the time goes. Every worker actor is a new Python process that imports PyTorch and "
              f"torchvision ({stack:.1f} CPU-s here; torchvision alone pulls in `torch._dynamo`), and Ray starts its "
              "own processes (GCS, raylet, agents, monitors) before anything runs. The driver imports neither torch "
              "nor torchvision: its checks read torchvision's model list from the cache folder (written by the first "
              "check on a machine, like the sample video; both exist before the first run here), it runs them while "
              "Ray starts, asks for every actor at once, and the actors build their models with `weights=None` in "
              "well under a second (above). So the first step waits for, one after the other: Ray's start, an "
              "actor's process and its imports, its setup. On a shared machine other jobs take their part of the "
              f"cores too; on {cores} cores the CPU-seconds above, divided by {cores}, bound the first step from "
              "below. With a core per actor the actors' imports run side by side. What is left for one actor is "
              "Ray's start (about 5 s of `ray.init` here) and one process's torch and torchvision imports (above), "
              "one after the other; Ray's `preload_python_modules` (its prestarted workers import torch before the "
              "actor asks) was tried and gave no steady gain here, while it made every worker process of the job, "
              "the sink's included, import torch.", ""]
    return "\n".join(lines)


BASELINE_ROWS = [("Ray ready", "embedded Ray started, local checks passed (s)"), ("first step", "**first step** (s)"),
                 ("every actor stepping", "every actor has begun its first step (s)")]


def baseline_table(results: dict[str, list[dict]], base: dict[str, list[dict]], rev: str) -> list[str]:
    """This checkout against another one (``--baseline``), their runs interleaved."""
    lines = ["", f"Against the checkout of `{rev}` (`--baseline`), its runs interleaved with these (medians):", "",
             "| job | measure | baseline | this checkout | change |", "|---|---|---|---|---|"]
    for job in results:
        rows = [(text, [r[key] for r in base[job]], [r[key] for r in results[job]]) for key, text in BASELINE_ROWS]
        for who, text in (("driver (rayprof submit)", "driver CPU-s to the first step"), (None, "all processes' CPU-s to the first step")):
            pick = (lambda r: r["cpu"].get(who, 0.0)) if who else (lambda r: sum(r["cpu"].values()))
            rows.append((text, [pick(r) for r in base[job]], [pick(r) for r in results[job]]))
        for text, b, a in rows:
            lines.append(f"| {job} | {text} | {med(b):.1f} | {med(a):.1f} | {med(a) - med(b):+.1f} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3, help="fresh processes per job; the median is shown")
    ap.add_argument("--jobs", default="fleet,one", help="fleet, one, or both (comma-separated)")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--baseline", type=Path, default=None,
                    help="another checkout of rayprof (git worktree add DIR REV): its runs interleaved with these")
    args = ap.parse_args()
    args.baseline_rev = None
    if args.baseline:
        args.baseline_rev = subprocess.run(["git", "-C", str(args.baseline), "log", "-1", "--format=%h"],
                                           capture_output=True, text=True, check=True).stdout.strip()
    subprocess.run([sys.executable, "-c", "from rayprof.samples import ensure_sample; ensure_sample(); "
                    "from rayprof.checks import classification_models; classification_models()"],
                   cwd=ROOT, env=env(), check=True)  # what a machine's first run makes once
    with tempfile.TemporaryDirectory(prefix="rayprof-startup-bench-") as tmp:
        one = Path(tmp) / "one.yaml"
        one.write_text(ONE_ACTOR)
        specs = {"fleet": ROOT / "jobs" / "fleet.yaml", "one": one}
        results: dict[str, list[dict]] = {j: [] for j in args.jobs.split(",")}
        base: dict[str, list[dict]] = {j: [] for j in results}
        trees = [(ROOT, results, "")] + ([(args.baseline.resolve(), base, "baseline ")] if args.baseline else [])
        for n in range(args.runs):  # interleaved, so a busy moment of a shared machine hits every job
            for job in results:
                for root, into, label in trees:
                    spec = root / "jobs" / "fleet.yaml" if job == "fleet" else specs[job]
                    r = submit_once(spec, Path(tmp) / f"{label}{job}-{n}", root)
                    into[job].append(r)
                    print(f"{label}{job:<6} run {n}: first step {r['first step']:5.1f} s, every actor "
                          f"{r['every actor stepping']:5.1f} s, exit {r['exit']:5.1f} s, CPU to first step "
                          f"{sum(r['cpu'].values()):5.1f} s, load {r['load']:.1f}", flush=True)
    text = report(results, piece_costs(3), args, base if args.baseline else None)
    print(text)
    if not args.no_write:
        write_section(ROOT / "benchmarks" / "RESULTS.md", "## Start-up", text)


if __name__ == "__main__":
    main()
