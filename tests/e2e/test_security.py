"""Security (issue 7), end to end: no shell command built from spec strings, credentials in
stream URLs never written or shown, nothing written outside the output root, and a spec that
cannot run code.

Paths, decided here: a worker or run name becomes a folder name, so ``../evil``, ``/abs``,
``a/b``, ``..`` are refused (exit 2) before anything is written; the names of every file rayprof
writes under a run (parts, manifest, index, profiler traces) are made of those names and actor
ids, checked by ``sink.safe_component`` (unit-tested in tests/unit). ``output`` (or ``--output``)
is the dataset root itself, the user's choice like any ``-o``: ``../../runs`` and absolute paths
are accepted and the run writes under that folder and nowhere else, which
:func:`test_a_run_writes_under_its_output_root_only` shows for a whole ``rayprof run``.
"""

from __future__ import annotations

import ast
import base64
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest

from rayprof.source import make_sample_video
from tests.support.cli import rayprof_cmd
from tests.support.frames import REPO, tool
from tests.support.rtsp_server import RtspTestServer

SECRET = "S3cr3tPassw0rd"
WRONG = "Wr0ngPassw0rd"  # also a secret: a wrong password is someone's password, mistyped
USER = "viewer"


def rayprof(*args: str, cwd: Path = REPO, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    full = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1", **(env or {})}
    full["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), full.get("PYTHONPATH", "")) if p)
    full.pop("RAY_ADDRESS", None)
    return subprocess.run(rayprof_cmd() + list(args), cwd=cwd, env=full, capture_output=True, text=True,
                          timeout=timeout)


def files_under(folder: Path) -> dict[str, int]:
    """Every file and folder under ``folder``: relative path → size (-1 for a folder)."""
    return {str(p.relative_to(folder)): (-1 if p.is_dir() else p.stat().st_size) for p in folder.rglob("*")}


def assert_one_line_error(res: subprocess.CompletedProcess, needle: str) -> None:
    shown = res.stdout[-2000:] + res.stderr[-3000:]
    assert res.returncode == 2 and res.stdout == "", shown
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("error: ") and needle in res.stderr, shown


# --------------------------------------------------------------------------- no shell, no eval


#: calls that run a shell, evaluate text or unpickle / construct objects from text
FORBIDDEN_CALLS = {
    "os.system", "os.popen", "subprocess.getoutput", "subprocess.getstatusoutput", "eval", "exec",
    "yaml.load", "yaml.unsafe_load", "yaml.full_load", "yaml.load_all", "yaml.unsafe_load_all", "yaml.full_load_all",
    "pickle.loads", "pickle.load", "cloudpickle.loads", "cloudpickle.load",
}
SUBPROCESS_CALLS = {"subprocess.run", "subprocess.Popen", "subprocess.call", "subprocess.check_call",
                    "subprocess.check_output"}


class _Scanner(ast.NodeVisitor):
    """Flags, in one module: a forbidden call (imports and aliases resolved), ``shell=`` other
    than a literal False, and a subprocess call whose command is a string (a shell-like line)."""

    def __init__(self, where: str):
        self.where, self.names, self.found = where, {}, []

    def visit_Import(self, node: ast.Import) -> None:
        for a in node.names:
            self.names[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        for a in node.names:
            self.names[a.asname or a.name] = f"{node.module}.{a.name}"

    def qualified(self, func: ast.expr) -> str:
        parts = []
        while isinstance(func, ast.Attribute):
            parts.append(func.attr)
            func = func.value
        if not isinstance(func, ast.Name):
            return ""
        return ".".join([self.names.get(func.id, func.id), *reversed(parts)])

    def visit_Call(self, node: ast.Call) -> None:
        name = self.qualified(node.func)
        at = f"{self.where}:{node.lineno}"
        if name in FORBIDDEN_CALLS:
            self.found.append(f"{at}: {name}()")
        for kw in node.keywords:
            if kw.arg == "shell" and not (isinstance(kw.value, ast.Constant) and kw.value.value is False):
                self.found.append(f"{at}: {name}(shell=…)")
        if name in SUBPROCESS_CALLS and node.args and _is_text(node.args[0]):
            self.found.append(f"{at}: {name}() with a command string")
        self.generic_visit(node)


def _is_text(node: ast.expr) -> bool:
    """A string literal, an f-string, ``"…" + x``, ``"…" % x`` or ``"…".format(…)``."""
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str)
    if isinstance(node, ast.JoinedStr):
        return True
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mod)):
        return _is_text(node.left) or _is_text(node.right)
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "format" \
        and _is_text(node.func.value)


def scan(source: str, where: str = "<snippet>") -> list[str]:
    scanner = _Scanner(where)
    scanner.visit(ast.parse(source))
    return scanner.found


def test_the_scanner_flags_every_pattern():
    bad = """
import os, subprocess as sp, pickle
from yaml import load as yload, unsafe_load
from subprocess import check_output
os.system("echo " + name)
os.popen(cmd)
sp.run(f"nsys {opts}", shell=True)
sp.Popen("ls -l")
check_output("ls %s" % d)
subprocess_ok = sp.run(["ls", d], shell=flag)
eval(text); exec(code)
yload(text); unsafe_load(text)
pickle.loads(blob)
"""
    found = scan(bad)
    for what in ("os.system()", "os.popen()", "subprocess.run(shell=…)", "subprocess.run() with a command string",
                 "subprocess.Popen() with a command string", "subprocess.check_output() with a command string",
                 "eval()", "exec()", "yaml.load()", "yaml.unsafe_load()", "pickle.loads()"):
        assert any(f.endswith(what) for f in found), (what, found)
    assert sum(f.endswith("(shell=…)") for f in found) == 2  # shell=True and shell=<a variable>
    good = 'import subprocess, yaml\nsubprocess.run(["nsys", "--version"], shell=False)\nyaml.safe_load(t)\nm.eval()\n'
    assert scan(good) == []


def test_no_shell_eval_or_unsafe_loading_in_the_product():
    modules = sorted(p for pkg in ("rayprof", "frame_extract") for p in (REPO / pkg).rglob("*.py"))
    assert len(modules) > 40
    found = [f for p in modules for f in scan(p.read_text(), str(p.relative_to(REPO)))]
    assert found == []


@pytest.mark.slow
def test_nsys_options_with_shell_characters_are_refused(tmp_path):
    """``profile.nsys.options`` are the one spec value that reaches a shell (Ray runs a profiled
    worker through ``bash -c``): a value with shell characters is refused before any actor starts."""
    marker = tmp_path / "injected"
    spec = tmp_path / "nsys.yaml"
    spec.write_text("workers:\n  - {name: a, model: mobilenet_v3_small, source: synthetic, device: cpu,\n"
                    f"     profile: {{nsys: {{options: {{t: 'nvtx;touch {marker}'}}}}}}}}\n")
    res = rayprof("submit", str(spec), "--output", str(tmp_path / "runs"))
    assert_one_line_error(res, "workers[0].profile.nsys.options.t = 'nvtx;touch ")
    assert "cannot pass through Ray's worker command line" in res.stderr
    assert not marker.exists() and not (tmp_path / "runs").exists()


# --------------------------------------------------------------------------- a spec cannot run code


PAYLOADS = {
    "apply": '!!python/object/apply:os.system ["touch {m}"]',
    "new": '!!python/object/new:subprocess.Popen [["touch", "{m}"]]',
    "name": "!!python/name:os.system",
    "in-a-value": 'workers:\n  - name: !!python/object/apply:os.system ["touch {m}"]',
}


@pytest.mark.parametrize("command", ["validate", "submit"])
@pytest.mark.parametrize("payload", list(PAYLOADS))
def test_a_yaml_python_tag_is_refused_and_not_run(payload, command, tmp_path):
    marker = tmp_path / "pwned"
    spec = tmp_path / "evil.yaml"
    spec.write_text(PAYLOADS[payload].format(m=marker) + "\n")
    res = rayprof(command, str(spec), *(["--output", str(tmp_path / "runs")] if command == "submit" else []))
    assert_one_line_error(res, f"spec = '{spec}': has the tag !!python/")
    assert "which could run code" in res.stderr
    assert not marker.exists() and not (tmp_path / "runs").exists()


def test_a_python_tag_in_a_set_value_is_only_text(tmp_path):
    """``--set`` values are parsed with ``safe_load`` too: the tag stays a string, then fails as a name."""
    marker = tmp_path / "pwned"
    spec = tmp_path / "ok.yaml"
    spec.write_text("workers: [{name: a, model: resnet18, source: synthetic}]\n")
    res = rayprof("validate", str(spec), "--set", f'run=!!python/object/apply:os.system ["touch {marker}"]')
    assert_one_line_error(res, "run = '!!python/object/apply:os.system")
    assert "is not a safe name" in res.stderr and not marker.exists()


# --------------------------------------------------------------------------- names cannot escape the root


UNSAFE = ["../evil", "/abs", "a/b", "..", ".hidden", "x/../../evil"]


@pytest.mark.parametrize("name", UNSAFE)
def test_an_unsafe_worker_name_is_refused_before_anything_is_written(name, tmp_path):
    root = tmp_path / "out" / "runs"
    (tmp_path / "out").mkdir()
    spec = tmp_path / "out" / "job.yaml"
    spec.write_text("workers:\n  - " + json.dumps({"name": name, "model": "resnet18", "source": "synthetic"}) + "\n")
    before = files_under(tmp_path)
    res = rayprof("submit", str(spec), "--output", str(root))
    assert_one_line_error(res, f"workers[0].name = {name!r}: is not a safe name")
    assert files_under(tmp_path) == before


@pytest.mark.parametrize("flag, value", [("--run-name", "../evil"), ("--run-name", "/abs"),
                                         ("--model-name", "../../evil")])
def test_an_unsafe_run_name_is_refused_before_anything_is_written(flag, value, tmp_path):
    before = files_under(tmp_path)
    res = rayprof("run", flag, value, "--input_path", "synthetic", "--output", str(tmp_path / "runs"))
    assert_one_line_error(res, f"{flag} = {value!r}: ")
    assert files_under(tmp_path) == before


# --------------------------------------------------------------------------- credentials


@pytest.fixture(scope="module")
def rtsp(tmp_path_factory):
    """A live RTSP stream on 127.0.0.1 that demands user ``viewer`` and :data:`SECRET`."""
    d = tmp_path_factory.mktemp("rtsp")
    video = make_sample_video(d / "cam.mp4", seconds=2.0, fps=15.0, width=160, height=120)
    with RtspTestServer(video, d, user=USER, password=SECRET) as srv:
        yield srv


@pytest.fixture(scope="module")
def single_run(rtsp, tmp_path_factory) -> dict:
    """``rayprof run`` on the stream, from ``work/a/b`` with ``--output ../../runs``: the result
    and ``work``'s files before and after."""
    work = tmp_path_factory.mktemp("work")
    cwd = work / "a" / "b"
    cwd.mkdir(parents=True)
    before = files_under(work)
    res = rayprof("run", "--input_path", rtsp.url, "--model-name", "mobilenet_v3_small", "--batch-size", "2",
                  "--max-steps", "3", "--warmup-steps", "1", "--run-name", "cam", "--output", "../../runs", cwd=cwd)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return {"work": work, "root": work / "runs", "res": res, "before": before, "after": files_under(work)}


@pytest.fixture(scope="module")
def fleet_run(rtsp, tmp_path_factory) -> dict:
    """``rayprof submit`` on an embedded Ray whose temp dir (its session logs) is ours: worker
    ``good`` on the stream, worker ``bad`` with a wrong password (it fails, the run exits 1)."""
    d = tmp_path_factory.mktemp("fleet")
    spec = d / "cams.yaml"
    wrong = rtsp.url.replace(SECRET, WRONG)
    spec.write_text(
        "run: cams\nflush_interval_s: 0.2\n"
        "defaults: {model: mobilenet_v3_small, batch_size: 2, max_steps: 3, warmup_steps: 1, device: cpu,\n"
        "           prep: {size: 64}}\n"
        "workers:\n"
        f"  - {{name: good, source: {{uri: '{rtsp.url}', open_timeout_s: 10}}}}\n"
        f"  - {{name: bad, source: {{uri: '{wrong}', open_timeout_s: 10, reconnect_s: 1}}}}\n")
    ray_tmp = Path(tempfile.mkdtemp(prefix="rp-sec-"))  # short: Ray's socket paths must fit 107 bytes
    failures = rtsp.auth_failures
    res = rayprof("submit", str(spec), "--output", str(d / "runs"), env={"RAY_TMPDIR": str(ray_tmp)})
    try:
        assert res.returncode == 1, res.stdout[-3000:] + res.stderr[-3000:]
        assert rtsp.auth_failures > failures, res.stderr[-3000:]  # the wrong password was tried
        yield {"root": d / "runs", "res": res, "ray_tmp": ray_tmp}
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


def secrets() -> list[str]:
    """Each password as written, and as an HTTP Basic ``Authorization`` header carries it."""
    return [s for p in (SECRET, WRONG) for s in (p, base64.b64encode(f"{USER}:{p}".encode()).decode())]


def leaks_in_files(folder: Path) -> list[str]:
    """Files under ``folder`` whose bytes, or (Parquet, Arrow) decoded values and metadata,
    hold a secret."""
    found = []
    for p in sorted(folder.rglob("*")):
        if not p.is_file():
            continue
        texts = [p.read_bytes().decode("latin-1")]
        if p.suffix == ".parquet":
            table = pq.read_table(p)
            texts += [repr(table.to_pylist()), repr(table.schema.metadata)]
        elif p.suffix == ".arrow":
            with ipc.open_file(p) as f:
                table = f.read_all()
            texts += [repr(table.to_pylist()), repr(table.schema.metadata)]
        found += [f"{p}: {s}" for s in secrets() for t in texts if s in t]
    return found


def leaks_in_text(**texts: str) -> list[str]:
    return [f"{where}: {s}" for where, t in texts.items() for s in secrets() if s in t]


def read_views(root: Path, tmp_path: Path) -> dict[str, str]:
    """What ``rayprof runs/query/report`` show and write about every run at ``root``."""
    out = {}
    for fmt in ("table", "json"):
        out[f"runs {fmt}"] = rayprof("runs", str(root), "--format", fmt)
        out[f"query {fmt}"] = rayprof("query", str(root), "--run", "all", "--format", fmt)
    out["report"] = rayprof("report", str(root), "-o", str(tmp_path / "report.html"))
    for name, res in out.items():
        assert res.returncode == 0, (name, res.stderr[-2000:])
    return {f"{k} {s}": getattr(r, s) for k, r in out.items() for s in ("stdout", "stderr")}


def test_credentials_never_leave_a_single_run(single_run, tmp_path):
    res, root = single_run["res"], single_run["root"]
    (man_path,) = root.glob("run=*/_manifest.json")
    manifest = man_path.read_text()
    assert f"{USER}:***@127.0.0.1" in manifest  # the URL is there, masked
    assert json.loads(manifest)["actors"] and list(root.glob("run=*/worker=*/*.parquet"))
    views = read_views(root, tmp_path)
    assert leaks_in_text(stdout=res.stdout, stderr=res.stderr, **views) == []
    assert leaks_in_files(root) == [] and leaks_in_files(tmp_path) == []


@pytest.mark.slow
def test_credentials_never_leave_a_fleet_nor_rays_logs(fleet_run, tmp_path):
    res, root, ray_tmp = fleet_run["res"], fleet_run["root"], fleet_run["ray_tmp"]
    failed = [line for line in res.stderr.splitlines() if "failed" in line]
    assert failed and all(f"{USER}:***@127.0.0.1" in line for line in failed), res.stderr[-3000:]
    (man_path,) = root.glob("run=*/_manifest.json")
    actors = json.loads(man_path.read_text())["actors"]
    assert {a["status"] for a in actors.values()} == {"completed", "failed"}
    logs = list(ray_tmp.glob("ray/session_*/logs/*"))
    assert logs, "the embedded Ray did not use RAY_TMPDIR: its logs cannot be checked"
    views = read_views(root, tmp_path)
    assert leaks_in_text(stdout=res.stdout, stderr=res.stderr, **views) == []
    assert leaks_in_files(root) == [] and leaks_in_files(tmp_path) == []
    assert leaks_in_files(ray_tmp) == []


def test_a_wrong_password_is_masked_in_the_frame_tools_error(rtsp, tmp_path):
    url = rtsp.url.replace(SECRET, WRONG)
    res = tool("frame_extractor", "-i", url, "-o", str(tmp_path / "out"), "--open-timeout", "3", timeout=120)
    assert_one_line_error(res, f"input = 'rtsp://{USER}:***@127.0.0.1:{rtsp.port}/live': could not be opened")
    assert leaks_in_text(stdout=res.stdout, stderr=res.stderr) == [] and not (tmp_path / "out").exists()


def test_a_run_writes_under_its_output_root_only(single_run):
    """``--output ../../runs`` from ``work/a/b``: the root is ``work/runs``, and every path the
    run created in ``work`` is that root or under it."""
    before, after = single_run["before"], single_run["after"]
    assert all(after[p] == size for p, size in before.items())
    new = sorted(set(after) - set(before))
    assert new and all(p == "runs" or p.startswith("runs/") for p in new), new
    assert any(p.startswith("runs/run=cam-") and p.endswith(".parquet") for p in new)
