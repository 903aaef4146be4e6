"""Bad input, end to end (issue 7): realistic mistakes in job specs, in the flags of the
``rayprof`` commands and in the two frame tools, each run as a user runs it (a subprocess).

Every mistake must end the same way: exit code 2, one line on stderr,
``error: <field> = <value>: <problem>; <fix>`` naming the field (a spec path such as
``workers[0].batch_size``, or the flag) and the value as typed, no traceback, nothing on stdout,
and nothing already written damaged.

"Already written" is a workspace built once: a dataset root with a real completed run
(``rayprof run``), a folder of frames the extractor wrote, a video, a text file posing as one,
and the spec files of the cases. Each case runs in its own byte-identical copy of it (its working
directory), so the cases can run side by side and a damaged file is pinned on the case that
damaged it: the copy's every path, size and SHA-256, folders included, must be the same after
the command as before (no new run folder, no half-written report, no stray frames).

The subprocesses (most of the time is Python importing torch) run up front on a small thread
pool; each parametrized case then checks its own result.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import pytest

from tests.support.cli import rayprof_cmd
from tests.support.frames import REPO, cfr_video, tool

pytestmark = pytest.mark.slow  # about a minute: 50 subprocesses, a third of them import torch

THREADS = 3  # 2 shared cores: the subprocesses mostly wait on imports and each other
HANG_GUARD_S = 300  # far above any case (12 s of CPU at most): only catches a hang


class Case(NamedTuple):
    """One mistake: the command (``rayprof …`` or a frame tool), what the error line must start
    with (``error: <field> = <value>: ``), and a needle for the rest of the line."""

    id: str
    argv: tuple[str, ...]   # "{spec}" stands for the case's spec file
    field: str
    value: object           # as the message shows it: repr(value)
    needle: str = ""
    spec: str | None = None  # the YAML of "{spec}"


def spec_case(id: str, yaml: str, field: str, value: object, needle: str = "", command: str = "validate",
              *extra: str) -> Case:
    return Case(id, ("rayprof", command, "{spec}", *extra), field, value, needle, yaml)


def worker(top: str = "", output: str = "runs", **settings) -> str:
    """A spec of one worker ``a`` (resnet18 on synthetic frames) with ``settings``, writing to
    ``output``, plus the top-level YAML ``top``."""
    return "workers:\n  - " + json.dumps({"name": "a", "model": "resnet18", "source": "synthetic", **settings}) \
        + f"\noutput: {output}\n" + top


OK = worker(max_steps=3, warmup_steps=1)  # valid

CASES = [
    # -- job specs ----------------------------------------------------------------------------
    spec_case("spec-key-typo", worker(batchsize=4), "workers[0].batchsize", "batchsize", "did you mean 'batch_size'"),
    spec_case("spec-top-level-key-typo", "workerz: []\n", "workerz", "workerz", "did you mean 'workers'"),
    spec_case("spec-wrong-type", worker(batch_size="four"), "workers[0].batch_size", "four", "write a whole number"),
    spec_case("spec-negative-in-defaults", "defaults: {batch_size: -1}\n" + worker(), "defaults.batch_size", -1,
              "set it to 1 or more"),
    spec_case("spec-zero-replicas", worker(replicas=0), "workers[0].replicas", 0, "set it to 1 or more"),
    spec_case("spec-unknown-model", worker(model="resnet5000"), "workers[0].model.name",
              "resnet5000", "did you mean 'resnet50'", "submit", "--output", "runs"),  # checked while a Ray starts
    spec_case("spec-bad-split-point", worker(model={"name": "resnet18", "split": "layer9"}), "workers[0].model.split",
              "layer9", "is not a split point of resnet18"),
    spec_case("spec-bad-device", worker(device="gpu0"), "workers[0].device", "gpu0", "use cpu, cuda, cuda:N or auto"),
    spec_case("spec-cores-out-of-range", worker(cores="4096-4097"), "workers[0].cores", "4096-4097",
              "not available on this machine"),
    spec_case("spec-source-scheme", worker(source="ftp://cam/x.mp4"), "workers[0].source.uri", "ftp://cam/x.mp4",
              "scheme 'ftp://' is not supported"),
    spec_case("spec-missing-video", worker(source="missing.mp4"), "workers[0].source.uri", "missing.mp4",
              "no such file"),
    spec_case("spec-duplicate-names",
              "defaults: {model: resnet18, source: synthetic}\nworkers: [{name: a}, {name: a}]\n",
              "workers[1].name", "a", "is already the name of workers[0]"),
    spec_case("spec-worker-name-dotdot", worker(name="../x"), "workers[0].name", "../x", "is not a safe name", "submit",
              "--output", "runs"),
    spec_case("spec-worker-name-slash", worker(name="a/b"), "workers[0].name", "a/b", "is not a safe name"),
    spec_case("spec-run-name-dotdot", worker("run: ../up\n"), "run", "../up", "is not a safe name", "submit"),
    spec_case("spec-output-is-a-file", worker(output="clip.mp4"), "output", "clip.mp4",
              "is a file, not a folder"),
    spec_case("spec-sweep-key-typo", worker("sweep: {batchsize: [1, 2]}\n"), "sweep.batchsize", "batchsize",
              "did you mean 'batch_size'"),
    spec_case("spec-sweep-unknown-worker", worker("sweep: {workers: [b], replicas: [1, 2]}\n"), "sweep.workers", "b",
              "is not a worker of this spec"),
    spec_case("spec-yaml-syntax", "workers:\n  - {name: a, model: resnet18\n", "spec", "spec-yaml-syntax.yaml",
              "is not valid YAML at line 3"),
    spec_case("spec-yaml-python-tag", '!!python/object/apply:os.system ["echo hi"]\n', "spec",
              "spec-yaml-python-tag.yaml", "has the tag !!python/object/apply:os.system", "submit", "--output", "runs"),
    spec_case("spec-empty-file", "", "workers", None, "must be a non-empty list"),
    spec_case("spec-bad-pipeline", worker(pipeline="parallel"), "workers[0].pipeline", "parallel",
              "'serial' or 'overlap'"),
    spec_case("spec-bad-sink", worker("sink: s3\n"), "sink", "s3", "'auto', 'driver' or 'direct'"),
    spec_case("spec-bad-profile", worker(profile={"torch": {"active": 0}}), "workers[0].profile.torch.active", 0,
              "set it to 1 or more"),
    spec_case("spec-warmup-not-below-max-steps", worker(max_steps=5, warmup_steps=5), "workers[0].warmup_steps", 5,
              "leaves no measured step"),
    spec_case("spec-set-without-value", OK, "--set", "batch_size", "is not KEY=VALUE", "validate", "--set",
              "batch_size"),
    Case("spec-is-a-folder", ("rayprof", "validate", "frames"), "spec", "frames", "is not a file"),
    # -- rayprof flags ------------------------------------------------------------------------
    Case("run-batch-size-not-a-number", ("rayprof", "run", "--batch-size", "abc", "--output", "runs"),
         "--batch-size", "abc", "is not a valid integer"),
    Case("run-batch-size-zero", ("rayprof", "run", "--batch-size", "0", "--output", "runs"), "--batch-size", 0,
         "set it to 1 or more"),
    Case("run-flag-typo", ("rayprof", "run", "--batchsize", "4", "--output", "runs"), "--batchsize", "--batchsize",
         "did you mean"),
    Case("run-mode-choice", ("rayprof", "run", "--mode", "train", "--output", "runs"), "--mode", "train",
         "is not one of 'inference', 'retrain'"),
    Case("run-input-missing", ("rayprof", "run", "--input_path", "/definitely/not/here.mp4", "--output", "runs"),
         "--input_path", "/definitely/not/here.mp4", "no such file"),
    Case("run-input-not-a-video", ("rayprof", "run", "--input_path", "notes.mp4", "--output", "runs"),
         "--input_path", "notes.mp4", "is not a video"),
    Case("run-model-name", ("rayprof", "run", "--model-name", "resnet5000", "--output", "runs"), "--model-name",
         "resnet5000", "rayprof models"),
    Case("run-split-point",
         ("rayprof", "run", "--model-name", "resnet18", "--split-point", "layer9", "--output", "runs"),
         "--split-point", "layer9", "is not a split point"),
    Case("run-output-is-a-file", ("rayprof", "run", "--output", "clip.mp4"), "--output", "clip.mp4",
         "is a file, not a folder"),
    Case("submit-resume-unknown-run", ("rayprof", "submit", "{spec}", "--resume", "nope", "--output", "runs"),
         "--resume", "nope", "is not a run in runs", OK),
    Case("command-typo", ("rayprof", "qeury", "runs"), "COMMAND", "qeury", "did you mean 'query'"),
    Case("query-unknown-run", ("rayprof", "query", "runs", "--run", "nope"), "--run", "nope", "is not a run in runs"),
    Case("query-format", ("rayprof", "query", "runs", "--format", "xml"), "--format", "xml",
         "is not one of 'table', 'csv', 'json'"),
    Case("query-by-column", ("rayprof", "query", "runs", "--by", "colour"), "--by", "colour",
         "is not a column of the steps view"),
    Case("query-sql-syntax", ("rayprof", "query", "runs", "--sql", "SELEC 1"), "--sql", "SELEC 1", "syntax error"),
    Case("runs-root-missing", ("rayprof", "runs", "nowhere"), "ROOT", "nowhere", "does not exist"),
    Case("report-unwritable", ("rayprof", "report", "runs", "-o", "/sys/rayprof-report.html"), "-o",
         "/sys/rayprof-report.html", "choose a folder you may write to"),
    # -- the frame tools ----------------------------------------------------------------------
    Case("extract-format", ("frame_extractor", "-i", "clip.mp4", "-o", "out", "--format", "gif"), "format", "gif",
         "use png (lossless), jpg or webp"),
    Case("extract-prefix-escapes", ("frame_extractor", "-i", "clip.mp4", "-o", "out", "--prefix", "../x"), "prefix",
         "../x", "may not contain /"),
    Case("extract-end-before-start",
         ("frame_extractor", "-i", "clip.mp4", "-o", "out", "--start", "1.5", "--end", "0.5"),
         "end", "0.5", "is not after --start"),
    Case("extract-over-an-earlier-run", ("frame_extractor", "-i", "clip.mp4", "-o", "frames", "--prefix", "shot_"),
         "output", "frames", "pass --overwrite to replace them"),
    Case("annotate-threshold", ("image_annotator", "-i", "frames", "-o", "annotated", "--threshold", "1.5"),
         "threshold", "1.5", "must be at most 1"),
    Case("annotate-output-is-input", ("image_annotator", "-i", "frames", "-o", "frames"), "output", "frames",
         "is where the input images are"),
]


def _env() -> dict:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.pop("RAY_ADDRESS", None)
    return env


def run_case(case: Case, cwd: Path) -> subprocess.CompletedProcess:
    """The case's command, as a user types it, in ``cwd``; a hang (past :data:`HANG_GUARD_S`)
    is this case's failure (exit code None), not the module's."""
    program, *args = [a.replace("{spec}", f"{case.id}.yaml") for a in case.argv]
    try:
        if program != "rayprof":
            return tool(program, *args, cwd=cwd, timeout=HANG_GUARD_S)
        return subprocess.run(rayprof_cmd() + args, cwd=cwd, env=_env(), capture_output=True, text=True,
                              timeout=HANG_GUARD_S)
    except subprocess.TimeoutExpired as e:
        return subprocess.CompletedProcess(e.cmd, None, "", f"(still running after {e.timeout:g} s: killed)")


def snapshot(folder: Path) -> dict[str, tuple]:
    """Every folder and file under ``folder``: its relative path → ("dir",) or (size, sha256)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        out[rel] = ("dir",) if p.is_dir() else (p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest())
    return out


def build_workspace(ws: Path) -> None:
    """What is already written before any mistake: a root with a real completed run, frames the
    extractor wrote, a video, a text file named like a video, and every case's spec."""
    ws.mkdir()
    res = subprocess.run(rayprof_cmd() + ["run", "--input_path", "synthetic", "--model-name", "mobilenet_v3_small",
                                          "--batch-size", "1", "--max-steps", "3", "--warmup-steps", "1",
                                          "--output", "runs"], cwd=ws, env=_env(), capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    (manifest,) = (ws / "runs").glob("run=*/_manifest.json")
    assert json.loads(manifest.read_text())["status"] == "completed"
    assert list(manifest.parent.glob("worker=*/*.parquet"))
    cfr_video(ws / "clip.mp4", seconds=2, fps=10, width=64, height=48)
    res = tool("frame_extractor", "-i", "clip.mp4", "-o", "frames", "--fps", "2", "--prefix", "shot_",
               "--format", "png", cwd=ws)
    assert res.returncode == 0, res.stderr
    (ws / "notes.mp4").write_text("not a video\n")
    for case in CASES:
        if case.spec is not None:
            (ws / f"{case.id}.yaml").write_text(case.spec)


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[str, tuple]:
    """Each case run in its own copy of the workspace: case id → (result, snapshot before, after)."""
    base = tmp_path_factory.mktemp("bad-input")
    template = base / "template"
    build_workspace(template)

    def one(case: Case) -> tuple:
        ws = base / case.id
        shutil.copytree(template, ws, symlinks=True)
        before = snapshot(ws)
        res = run_case(case, ws)
        return res, before, snapshot(ws)

    with ThreadPoolExecutor(THREADS) as pool:
        out = dict(zip((c.id for c in CASES), pool.map(one, CASES)))
    yield out
    shutil.rmtree(base, ignore_errors=True)


def test_the_cases_are_distinct_and_enough():
    assert len({c.id for c in CASES}) == len(CASES) >= 30
    assert len({(c.argv, c.spec) for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_a_mistake_is_one_line_exit_2_and_damages_nothing(case, results):
    res, before, after = results[case.id]
    shown = f"{' '.join(case.argv)}\n--- stdout\n{res.stdout[-2000:]}\n--- stderr\n{res.stderr[-3000:]}"
    assert "Traceback" not in res.stdout + res.stderr, shown
    assert res.returncode == 2, shown
    assert res.stdout == "", shown
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and res.stderr.endswith("\n"), shown
    head = f"error: {case.field} = {case.value!r}: "
    line = lines[0]
    assert line.startswith(head), f"expected {head!r}…\n{shown}"
    problem, sep, fix = line[len(head):].rpartition("; ")
    assert sep and problem.strip() and fix.strip(), f"no '<problem>; <fix>' after the value\n{shown}"
    assert case.needle in line, shown
    assert after == before, (f"changed: {sorted(set(after.items()) ^ set(before.items()))}\n{shown}")
