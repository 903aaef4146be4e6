"""Nsight Systems through Ray's ``nsight`` runtime environment: ``profile.nsys`` / ``--nsys``.

Ray does the launching: an actor created with ``runtime_env={"nsight": {option: value}}`` runs
as ``nsys profile <options> python default_worker.py …`` and nsys writes its report, when that
process exits, into the node's ``<Ray session>/logs/nsight/`` folder (Ray's own
``NSIGHT_DEFAULT_CONFIG`` names it ``worker_process_%p``). rayprof adds what a fleet needs:

1. :func:`runtime_env_for` — the spec's options, ``nvtx`` always traced (the stage ranges of
   :mod:`rayprof.markers`), and the output named ``rayprof_<run_id>_%p`` in Ray's folder: nsys
   puts the profiled process's pid for ``%p``, the pid the actor reports in its result.
2. :func:`preflight` — before any actor starts, every node that may host a profiled actor is
   asked (a zero-CPU task pinned there) for ``nsys --version``: a node without it is a
   :class:`UserError`, not an actor that fails in its runtime-environment setup.
3. :func:`collect_reports` — after the run the profiled actors exit gracefully
   (:meth:`~rayprof.fleet._actors.WorkerActor.exit`; ``ray.kill`` would kill nsys's target
   before it could write a report), a task on each of their nodes waits up to ``wait_s`` for the reports to be complete
   and returns their bytes, and the driver stores them as ``run=<id>/_profiles/nsys/<actor>.nsys-rep``.
   A report that does not come is one line on stderr and ``nsys_missing`` in the manifest.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import ray

from ..errors import UserError
from ..plan import WorkerPlan
from ..sink import PROFILES, DatasetWriter, run_dir
from ..source import mask_url
from ._nodes import INVENTORY_TIMEOUT_S, run_on_nodes

KIND = "nsys"
NSYS_DEFAULT_TRACE = "cuda,opengl,nvtx,osrt"  # what `nsys profile` traces when -t is not given
_TRACE_KEYS = ("t", "trace")
_OUTPUT_KEYS = ("o", "output")  # rayprof names the reports: it must find them again
# Ray joins the options into a `bash -c` command line unquoted: values stay plain words
_PLAIN = re.compile(r"^[^\s'\"\\;&|<>$`(){}]*$")
VERSION_TIMEOUT_S = 30.0
EXIT_TIMEOUT_S = 30.0
POLL_S = 1.0


# --------------------------------------------------------------------------- options


def report_stem(run_id: str) -> str:
    """The ``-o`` value: nsys replaces ``%p`` with the profiled process's pid."""
    return f"rayprof_{run_id}_%p"


def report_name(run_id: str, pid: int) -> str:
    """The file nsys writes for the process ``pid`` (it adds ``.nsys-rep``)."""
    return report_stem(run_id).replace("%p", str(pid)) + ".nsys-rep"


def _word(value: str | int | float | bool) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def nsys_options(plan: WorkerPlan) -> dict[str, str]:
    """``nsys profile`` options for ``plan`` in Ray's form (name without dashes → value):
    the spec's options as words, ``nvtx`` added to the trace list, the output named by rayprof."""
    opts = {k: _word(v) for k, v in plan.profile_nsys["options"].items()}
    key = next((k for k in _TRACE_KEYS if k in opts), "t")
    traced = [x for x in opts.get(key, NSYS_DEFAULT_TRACE).split(",") if x and x != "none"]
    opts[key] = ",".join(traced + ([] if "nvtx" in traced else ["nvtx"]))
    opts["o"] = report_stem(plan.run_id)
    return opts


def runtime_env_for(plan: WorkerPlan) -> dict | None:
    """The actor's ``runtime_env`` entry that runs it under nsys, or None without ``profile.nsys``."""
    return {"nsight": nsys_options(plan)} if plan.profile_nsys else None


def check_options(plan: WorkerPlan) -> None:
    """Options Ray cannot pass on, or that would hide the report from rayprof: a UserError."""
    for k, v in plan.profile_nsys["options"].items():
        field = f"{plan.field}.profile.nsys.options.{k}"
        if k in _OUTPUT_KEYS:
            raise UserError(field, v, "is chosen by rayprof (one report per actor, collected into the run's folder)",
                            "remove it")
        if not (_PLAIN.match(k) and _PLAIN.match(_word(v))):
            raise UserError(field, v, "cannot pass through Ray's worker command line (spaces, quotes or shell characters)",
                            "use a plain value such as cuda,nvtx or 30")


# --------------------------------------------------------------------------- before the run


def nsys_version() -> dict:
    """Runs on a node: ``{"version": <first line of nsys --version>}``, or None where nsys is
    missing or does not run."""
    path = shutil.which("nsys")
    if path is None:
        return {"version": None}
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=VERSION_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return {"version": None}
    lines = (out.stdout or out.stderr).strip().splitlines()
    return {"version": lines[0] if out.returncode == 0 and lines else None}


def preflight(plans: list[WorkerPlan]) -> None:
    """Before any actor starts: the profiled plans' options are usable and every node that may
    host one of them (its placed node, or any alive node) has nsys."""
    profiled = [p for p in plans if p.profile_nsys]
    if not profiled:
        return
    for p in profiled:
        check_options(p)
    ips = {n["NodeID"]: n.get("NodeManagerAddress", "?") for n in ray.nodes() if n.get("Alive")}
    hosts = {p.actor_id: [p.node_id] if p.node_id else list(ips) for p in profiled}
    answers = run_on_nodes(nsys_version, sorted({nid for nids in hosts.values() for nid in nids}))
    for p in profiled:
        for nid in hosts[p.actor_id]:
            answer, where = answers[nid], f"{ips.get(nid, '?')} [{nid[:8]}]"
            if "error" in answer:
                raise UserError(f"{p.field}.profile.nsys", ips.get(nid, nid), f"cannot check for nsys on node {where} "
                                f"({answer['error']})", "check that the node is healthy, or remove profile.nsys")
            if not answer["version"]:
                raise UserError(f"{p.field}.profile.nsys", ips.get(nid, nid), f"nsys is not installed on node {where} "
                                "(not on the PATH of its Ray worker processes)",
                                "install Nsight Systems there, or remove profile.nsys")


# --------------------------------------------------------------------------- after the run


def nsight_dir() -> Path:
    """Runs on a node: where Ray's nsight plugin has nsys write (``<session>/logs/nsight``)."""
    return Path(ray._private.worker._global_node.get_session_dir_path()) / "logs" / "nsight"


def _complete(path: Path, last_size: int | None) -> tuple[bool, int | None]:
    """Whether a report is whole: it exists, is not empty, its size has not changed since the
    last look, and nsys's intermediate ``.qdstrm`` beside it is gone. Returns (done, size)."""
    if not path.is_file():
        return False, None
    size = path.stat().st_size
    intermediate = path.with_name(path.name.removesuffix(".nsys-rep") + ".qdstrm")
    return size > 0 and size == last_size and not intermediate.exists(), size


def read_reports(expected: dict[str, dict[str, float]]) -> dict:
    """Runs on a node: ``{"reports": {name: bytes}, "folder": …}`` for the reports ``expected``
    on this node (``{node_id: {name: seconds to wait for it}}``), each read once complete; one
    that is not complete in its time is left out."""
    folder = nsight_dir()
    t0 = time.monotonic()
    waiting = {name: (t0 + wait_s, None) for name, wait_s in expected.get(ray.get_runtime_context().get_node_id(), {}).items()}
    reports: dict[str, bytes] = {}
    while waiting:
        for name, (deadline, last) in list(waiting.items()):
            done, size = _complete(folder / name, last)
            if done:
                reports[name] = (folder / name).read_bytes()
            if done or time.monotonic() >= deadline:
                del waiting[name]
            else:
                waiting[name] = (deadline, size)
        if waiting:
            time.sleep(POLL_S)
    return {"reports": reports, "folder": str(folder)}


def _exit_gracefully(actors: list) -> None:
    """Ask each actor to exit and wait for the answers: each is its death (RayActorError)."""
    refs = [a.exit.remote() for a in actors]
    ray.wait(refs, num_returns=len(refs), timeout=EXIT_TIMEOUT_S)


def _locate(profiled: list[WorkerPlan], results: dict[str, dict], run_id: str) -> tuple[dict, dict[str, str]]:
    """Where each profiled actor's report should be: ``{actor: (node_id, report name, wait_s)}``
    from the pid and node in its result, and ``{actor: problem}`` for those that have none."""
    where, missing = {}, {}
    for p in profiled:
        ident = (results.get(p.actor_id) or {}).get("identity") or {}
        if ident.get("node_id") and ident.get("pid"):
            where[p.actor_id] = (ident["node_id"], report_name(run_id, ident["pid"]), p.profile_nsys["wait_s"])
        else:
            missing[p.actor_id] = "the actor reported no pid (it did not start, or was killed)"
    return where, missing


def _fetch(where: dict) -> tuple[dict[str, bytes], dict[str, str]]:
    """The reports of ``where`` (see :func:`_locate`), one task per node, all nodes at once:
    ``{actor: bytes}`` and ``{actor: problem}`` for the reports that did not come."""
    expected: dict[str, dict[str, float]] = {}
    for node_id, name, wait_s in where.values():
        expected.setdefault(node_id, {})[name] = wait_s
    longest = max((wait_s for _node, _name, wait_s in where.values()), default=0.0)
    # the task's own start (a worker process on that node) gets the time an inventory task gets
    answers = run_on_nodes(read_reports, list(expected), longest + INVENTORY_TIMEOUT_S, expected) if expected else {}
    reports, missing = {}, {}
    for aid, (node_id, name, wait_s) in where.items():
        answer = answers[node_id]
        if name in answer.get("reports", {}):
            reports[aid] = answer["reports"][name]
        else:
            missing[aid] = answer.get("error") or f"no complete {name} in {answer['folder']} after {wait_s:g} s"
    return reports, missing


def collect_reports(plans: list[WorkerPlan], actors: dict, results: dict[str, dict], root: str, run_id: str,
                    manifest) -> None:
    """After the run: end the profiled actors, fetch their reports from their nodes, store them
    as ``_profiles/nsys/<actor>.nsys-rep`` and list them in the manifest (``artifacts``). A
    report that does not come is one line on stderr and ``nsys_missing`` in the manifest."""
    profiled = [p for p in plans if p.profile_nsys]
    if not profiled:
        return
    _exit_gracefully([actors[p.actor_id] for p in profiled])
    where, missing = _locate(profiled, results, run_id)
    reports, lost = _fetch(where)
    writer = DatasetWriter(root, run_id)
    for aid, data in reports.items():
        writer.put_file(KIND, f"{aid}.nsys-rep", data)
        artifacts = manifest.data["actors"][aid].get("artifacts") or []
        manifest.actor(aid, artifacts=[*artifacts, f"{PROFILES}/{KIND}/{aid}.nsys-rep"])
    if reports:
        print(f"nsys: {len(reports)} report(s) in {mask_url(run_dir(root, run_id))}/{PROFILES}/{KIND}/ "
              "(open them in the Nsight Systems GUI, or `nsys stats <file>`)", flush=True)
    for aid, problem in {**missing, **lost}.items():
        manifest.actor(aid, nsys_missing=problem)
        print(f"{aid}: no nsys report: {problem}", file=sys.stderr, flush=True)
    manifest.write()
