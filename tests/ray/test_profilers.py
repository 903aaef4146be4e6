"""Profilers on one shared local Ray: torch.profiler traces, and Nsight Systems through Ray's
``nsight`` runtime environment with a fake ``nsys`` on the nodes' PATH (as Ray's own tests do)."""

import gzip
import json
import os
import sys

import pytest
import yaml

ray = pytest.importorskip("ray")

from click.testing import CliRunner  # noqa: E402

from rayprof import fleet  # noqa: E402
from rayprof.cli import main  # noqa: E402
from rayprof.errors import UserError  # noqa: E402
from rayprof.fleet._nsight import _complete, check_options, nsys_options, report_name, runtime_env_for  # noqa: E402
from rayprof.sink import read_manifest, read_table  # noqa: E402

from ..support import fake_nsys  # noqa: E402
from ..unit.fakes import make_plan  # noqa: E402
from .test_fleet import only_run, spec_for  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def fake_nsys_bin(tmp_path_factory):
    """A fake ``nsys`` first on the PATH that this module's Ray starts with (the raylet hands its
    environment to the worker processes). The interpreter's folder goes first too: Ray 2.60's
    nsight plugin starts the worker as a bare ``python``. Autouse: set before ``local_ray``."""
    folder = tmp_path_factory.mktemp("fake-nsys-bin")
    fake_nsys.install(folder)
    old = os.environ["PATH"]
    os.environ["PATH"] = os.pathsep.join([str(folder), os.path.dirname(sys.executable), old])
    yield folder
    os.environ["PATH"] = old


def write_spec(tmp_path, video, workers) -> str:
    path = tmp_path / "job.yaml"
    defaults = {"source": {"uri": str(video), "loop": True}, "model": "mobilenet_v3_small",
                "prep": {"level": "simple", "size": 64}, "batch_size": 4, "max_steps": 6, "warmup_steps": 2,
                "device": "cpu"}
    path.write_text(yaml.safe_dump({"run": "t", "output": str(tmp_path / "runs"), "flush_interval_s": 0.2,
                                    "defaults": defaults, "workers": workers}))
    return str(path)


# --------------------------------------------------------------------------- torch.profiler


def test_torch_traces_land_in_the_run_folder_and_the_manifest(local_ray, small_video, tmp_path):
    spec = spec_for(small_video, tmp_path, [
        {"name": "traced", "profile": {"torch": {"wait": 1, "warmup": 1, "active": 2, "repeat": 1}}}])
    assert fleet.submit(spec) == 0
    run_id = only_run(tmp_path)
    folder = tmp_path / f"run={run_id}" / "_profiles"
    assert sorted(p.name for p in (folder / "torch").iterdir()) == ["traced-0.0.pt.trace.json.gz"]
    assert not (folder / "nsys").exists()  # no profile.nsys, no report
    actor = read_manifest(tmp_path, run_id)["actors"]["traced-0"]
    assert actor["status"] == "completed" and actor["artifacts"] == ["_profiles/torch/traced-0.0.pt.trace.json.gz"]
    events = json.loads(gzip.decompress((folder / "torch" / "traced-0.0.pt.trace.json.gz").read_bytes()))["traceEvents"]
    names = {e.get("name") for e in events}
    assert {"rayprof/read", "rayprof/prep", "rayprof/exec", "ProfilerStep#2", "ProfilerStep#3"} <= names
    assert len(read_table(tmp_path, run_id)) == 6  # profiling costs no row


# --------------------------------------------------------------------------- Nsight Systems


def test_nsys_options_keep_the_spec_trace_nvtx_and_name_the_report():
    plan = make_plan(run_id="r-9", profile_nsys={"options": {"t": "cuda", "sample": "none", "cudabacktrace": True},
                                                 "wait_s": 5.0})
    assert runtime_env_for(plan) == {"nsight": {"t": "cuda,nvtx", "sample": "none", "cudabacktrace": "true",
                                                "o": "rayprof_r-9_%p"}}
    assert nsys_options(make_plan(profile_nsys={"options": {"trace": "none"}, "wait_s": 5.0}))["trace"] == "nvtx"
    assert nsys_options(make_plan(profile_nsys={"options": {}, "wait_s": 5.0}))["t"] == "cuda,opengl,nvtx,osrt"
    assert runtime_env_for(make_plan()) is None
    assert report_name("r-9", 4242) == "rayprof_r-9_4242.nsys-rep"


@pytest.mark.parametrize("options, problem", [
    ({"o": "mine"}, "is chosen by rayprof"),
    ({"capture-range": "cuda profiler api"}, "cannot pass through Ray's worker command line"),
])
def test_nsys_options_rayprof_cannot_honour_are_user_errors(options, problem):
    with pytest.raises(UserError) as e:
        check_options(make_plan(field="workers[1]", profile_nsys={"options": options, "wait_s": 5.0}))
    assert e.value.field.startswith("workers[1].profile.nsys.options.") and problem in e.value.message


def test_a_report_is_complete_once_its_size_holds_and_nsys_is_done_with_it(tmp_path):
    rep = tmp_path / "rayprof_r_7.nsys-rep"
    assert _complete(rep, None) == (False, None)  # not there yet
    rep.write_bytes(b"x" * 10)
    assert _complete(rep, None) == (False, 10)  # first sight: maybe still growing
    assert _complete(rep, 8) == (False, 10)  # it grew
    (tmp_path / "rayprof_r_7.qdstrm").write_bytes(b"")
    assert _complete(rep, 10) == (False, 10)  # nsys still converting its capture
    (tmp_path / "rayprof_r_7.qdstrm").unlink()
    assert _complete(rep, 10) == (True, 10)


def test_submit_nsys_collects_every_report_and_names_a_missing_one(local_ray, small_video, tmp_path):
    """``--nsys`` turns profile.nsys on for ``plain``; ``lost`` keeps its own options, which tell
    the fake nsys to write nothing: it is named on stderr and in the manifest after its wait_s."""
    spec = write_spec(tmp_path, small_video, [
        {"name": "plain"},
        {"name": "lost", "profile": {"nsys": {"options": {"fake-no-report": True}, "wait_s": 2}}},
    ])
    result = CliRunner().invoke(main, ["submit", spec, "--nsys"])
    assert result.exit_code == 0, result.output
    root = tmp_path / "runs"
    run_id = only_run(root)
    man = read_manifest(root, run_id)
    plain, lost = man["actors"]["plain-0"], man["actors"]["lost-0"]
    assert plain["status"] == lost["status"] == "completed"
    assert man["spec"]["workers"][0]["profile"]["nsys"]["options"] == {"t": "cuda,cudnn,cublas,nvtx,osrt"}
    # the report of the actor's own process (nsys's %p is its pid), from Ray's nsight folder
    assert sorted(p.name for p in (root / f"run={run_id}" / "_profiles" / "nsys").iterdir()) == ["plain-0.nsys-rep"]
    assert plain["artifacts"] == ["_profiles/nsys/plain-0.nsys-rep"]
    data = (root / f"run={run_id}" / "_profiles" / "nsys" / "plain-0.nsys-rep").read_bytes()
    assert data.startswith(fake_nsys.MAGIC)
    report = json.loads(data[len(fake_nsys.MAGIC):])
    assert report["pid"] == plain["identity"]["pid"] and report["returncode"] == 0  # the actor exited cleanly
    assert report["options"]["t"] == "cuda,cudnn,cublas,nvtx,osrt"
    assert report["options"]["o"].endswith(f"/logs/nsight/rayprof_{run_id}_%p")
    # the missing one: one line, in the manifest, and no hang (it waited its 2 s)
    assert f"rayprof_{run_id}_{lost['identity']['pid']}.nsys-rep" in lost["nsys_missing"]
    assert f"lost-0: no nsys report: {lost['nsys_missing']}" in result.stderr
    assert f"nsys: 1 report(s) in {root / f'run={run_id}'}/_profiles/nsys/" in result.stdout
    assert len(read_table(root, run_id)) == 12


def test_a_node_without_nsys_is_one_line_before_anything_starts(local_ray, small_video, tmp_path, fake_nsys_bin):
    spec = write_spec(tmp_path, small_video, [{"name": "a"}, {"name": "b"}])
    exe = fake_nsys_bin / "nsys"
    exe.rename(fake_nsys_bin / "nsys.away")
    try:
        result = CliRunner().invoke(main, ["submit", spec, "--nsys"])
    finally:
        (fake_nsys_bin / "nsys.away").rename(exe)
    assert result.exit_code == 2, result.output
    (line,) = [x for x in result.stderr.splitlines() if x.strip()]
    assert line.startswith("error: workers[0].profile.nsys = '") and "nsys is not installed on node" in line
    assert line.endswith("install Nsight Systems there, or remove profile.nsys")
    assert not (tmp_path / "runs").exists()  # no manifest, no rows: no actor was started
