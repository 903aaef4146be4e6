"""A three-node cluster on one machine (``ray.cluster_utils.Cluster``): placement by custom
resources, node and spread; rows from every node in one dataset; a node lost mid-run."""

import threading
import time

import pytest

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

from rayprof import fleet  # noqa: E402
from rayprof.errors import UserError  # noqa: E402
from rayprof.sink import read_manifest, read_table  # noqa: E402

from tests.support.media import free_port  # noqa: E402

from .test_fleet import only_run, spec_for  # noqa: E402

pytestmark = pytest.mark.slow


def submit_until(spec, root, pattern: str, never: str) -> tuple[threading.Thread, dict]:
    """Submit in a thread and return once a file matching ``pattern`` is under ``root`` (the
    thread, and the dict that gets its exit code)."""
    out: dict = {}
    t = threading.Thread(target=lambda: out.update(code=fleet.submit(spec)))
    t.start()
    deadline = time.monotonic() + 240
    while not list(root.glob(pattern)):
        assert time.monotonic() < deadline and t.is_alive(), never
        time.sleep(0.2)
    return t, out


@pytest.fixture(scope="module")
def cluster():
    """Head (node0) + node1 + node2, one CPU each, each with a custom resource naming it."""
    c = Cluster(initialize_head=True, connect=False, head_node_args={
        "num_cpus": 1, "resources": {"node0": 1}, "gcs_server_port": free_port(), "include_dashboard": False})
    nodes = [c.head_node] + [c.add_node(num_cpus=1, resources={f"node{k}": 1}) for k in (1, 2)]
    c.wait_for_nodes()
    ray.init(address=c.address, logging_level="WARNING")
    ids = {f"node{k}": n.node_id for k, n in enumerate(nodes)}
    yield c, ids, nodes
    ray.shutdown()
    c.shutdown()


def test_workers_on_every_node_land_in_one_dataset(cluster, small_video, tmp_path, capsys):
    _c, ids, _nodes = cluster
    spec = spec_for(small_video, tmp_path, [
        {"name": f"on-node{k}", "resources": {f"node{k}": 1}, "max_steps": 5 + k} for k in range(3)])
    t0 = time.monotonic()
    assert fleet.submit(spec) == 0
    print(f"three-node fleet: {time.monotonic() - t0:.1f} s")
    run_id = only_run(tmp_path)
    df = read_table(tmp_path, run_id).to_pandas()
    man = read_manifest(tmp_path, run_id)
    assert df.node_id.nunique() == 3
    for k in range(3):
        rows = df[df.worker == f"on-node{k}"]
        assert set(rows.node_id) == {ids[f"node{k}"]}, "each worker ran on the node holding its resource"
        assert sorted(rows.step) == list(range(5 + k)), "complete: one row per executed step"
        actor = man["actors"][f"on-node{k}-0"]
        assert actor["status"] == "completed" and actor["node_id"] == ids[f"node{k}"]
    assert set(man["nodes"]) == set(ids.values())
    assert all(n.get("cpu_model") and n.get("cores") for n in man["nodes"].values())
    out = capsys.readouterr().out
    assert f"[{ids['node2'][:8]}]" in out, "nodes sharing one IP are told apart by their id in the table"


def test_spread_and_node_by_id(cluster, small_video, tmp_path):
    _c, ids, _nodes = cluster
    spec = spec_for(small_video, tmp_path, [
        {"name": "spread", "replicas": 3, "spread": True, "max_steps": 3},
    ])
    assert fleet.submit(spec) == 0
    df = read_table(tmp_path, only_run(tmp_path)).to_pandas()
    assert df.groupby("actor_id").node_id.first().nunique() == 3
    spec = spec_for(small_video, tmp_path / "b", [{"name": "pinned", "node": ids["node1"][:10], "max_steps": 3}])
    assert fleet.submit(spec) == 0
    df = read_table(tmp_path / "b", only_run(tmp_path / "b")).to_pandas()
    assert set(df.node_id) == {ids["node1"]}


def test_split_sweep_with_head_and_tail_on_different_nodes(cluster, small_video, tmp_path, capsys):
    _c, ids, _nodes = cluster
    spec = spec_for(small_video, tmp_path, [
        {"name": "pair", "model": {"name": "mobilenet_v3_small", "split": ["none", "features.6"]}, "max_steps": 5,
         "pair": {"placement": "different-nodes", "window": 2}}])
    assert fleet.submit(spec) == 0
    run_id = only_run(tmp_path)
    df = read_table(tmp_path, run_id).to_pandas()
    man = read_manifest(tmp_path, run_id)
    assert set(man["actors"]) == {"pair-p0-0", "pair-p1-0-head", "pair-p1-0-tail"}
    full = df[df.sweep_point == "split=none"]
    assert set(full.role) == {"full"} and sorted(full.step) == list(range(5))
    head, tail = df[df.role == "head"], df[df.role == "tail"]
    assert sorted(head.step) == sorted(tail.step) == list(range(5)), "one row per batch on each side"
    assert set(head.pair_id) == set(tail.pair_id) == {"pair-p1-0"}
    assert set(head.split_point) == set(tail.split_point) == {"features.6"}
    assert head.node_id.nunique() == tail.node_id.nunique() == 1 and set(head.node_id) != set(tail.node_id)
    assert tail.transfer_ms.notna().all() and tail.read_ms.isna().all() and head.wait_ms.notna().all()
    (verdict,) = man["split_sweep"]
    assert verdict["worker"] == "pair" and {verdict["lowest_latency"], verdict["highest_throughput"]} <= {"none", "features.6"}
    out = capsys.readouterr().out
    assert "exec (tail)" in out and "e2e" in out and "split sweep pair: lowest end-to-end latency at" in out


def test_a_dead_tail_fails_its_head_in_one_line(cluster, small_video, tmp_path):
    spec = spec_for(small_video, tmp_path, [
        {"name": "pair", "model": {"name": "mobilenet_v3_small", "split": "features.6"}, "max_steps": 0,
         "pair": {"placement": "different-nodes"}}])
    t, out = submit_until(spec, tmp_path, "run=*/worker=pair/part-pair-0-tail-*.parquet", "the tail never flushed")
    ray.kill(ray.get_actor(f"rayprof:{only_run(tmp_path)}:pair-0-tail"))
    t.join(timeout=240)
    assert not t.is_alive() and out["code"] == 1
    man = read_manifest(tmp_path, only_run(tmp_path))
    head, tail = man["actors"]["pair-0-head"], man["actors"]["pair-0-tail"]
    assert tail["status"] == "failed" and tail["error"].startswith("actor died")
    assert head["status"] == "failed" and head["error"].startswith("RuntimeError: tail pair-0-tail is gone ("), head
    df = read_table(tmp_path, only_run(tmp_path)).to_pandas()
    assert sorted(df[df.role == "head"].step) == list(range(head["steps"])), "the head's rows kept, each once"


def test_impossible_requests_fail_in_seconds_naming_the_nodes(cluster, small_video, tmp_path):
    cases = [
        ({"name": "x", "resources": {"lidar": 1}}, r"workers\[0\].*lidar=1, which no node offers.*node0=1"),
        ({"name": "x", "node": "10.255.255.1"}, r"workers\[0\]\.node = '10\.255\.255\.1': is not a node"),
        ({"name": "x", "replicas": 2, "resources": {"node1": 1}}, r"does not fit"),
        ({"name": "x", "device": "cuda"}, r"workers\[0\]\.device.*(GPU|CUDA)"),
    ]
    for worker, pattern in cases:
        t0 = time.monotonic()
        with pytest.raises(UserError, match=pattern):
            fleet.submit(spec_for(small_video, tmp_path, [worker]))
        assert time.monotonic() - t0 < 60, "an impossible request must not wait for Ray"
    assert not list(tmp_path.glob("run=*")), "nothing is written for a run that cannot start"


def test_a_lost_node_is_reported_and_the_others_complete(cluster, small_video, tmp_path, capsys):
    """Runs last: it takes node2 away."""
    c, ids, nodes = cluster
    spec = spec_for(small_video, tmp_path, [
        {"name": "victim", "resources": {"node2": 1}, "max_steps": 0},  # loops until its node goes
        {"name": "steady", "resources": {"node1": 1}, "max_steps": 10},
    ])
    t, out = submit_until(spec, tmp_path, "run=*/worker=victim/part-*.parquet", "the victim never flushed")
    c.remove_node(nodes[2], allow_graceful=False)
    t.join(timeout=240)
    assert not t.is_alive() and out["code"] == 1
    run_id = only_run(tmp_path)
    man = read_manifest(tmp_path, run_id)
    victim = man["actors"]["victim-0"]
    assert victim["status"] == "failed" and victim["error"].startswith("actor died"), victim
    assert man["actors"]["steady-0"]["status"] == "completed"
    assert man["status"] == "failed" and man["exit_code"] == 1
    df = read_table(tmp_path, run_id).to_pandas()
    kept = sorted(df[df.worker == "victim"].step)
    assert kept and kept == list(range(len(kept))), "its rows up to the last flush, each once"
    assert sorted(df[df.worker == "steady"].step) == list(range(10))
    assert "victim-0 failed: actor died" in capsys.readouterr().err
