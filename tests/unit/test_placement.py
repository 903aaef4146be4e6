"""Placement on a cluster (pure): nodes, custom resources, spread, per-node cores, GPUs, errors."""

import itertools
from collections import Counter

import pytest

from rayprof.errors import UserError
from rayprof.placement import Node
from rayprof.plan import plan_fleet
from rayprof.spec import parse_fleet


def spec(*workers, **defaults):
    return parse_fleet({"run": "p", "defaults": {"source": "v.mp4", "model": "resnet18", "device": "cpu", **defaults},
                        "workers": list(workers)})


def node(i, cpus=4, gpus=0, driver=False, ip=None, host=None, **custom):
    return Node(f"{i:02d}" + "ab" * 27, ip=ip or f"10.0.0.{i}", hostname=host or f"host{i}",
                resources={"CPU": float(cpus), "GPU": float(gpus), f"node:10.0.0.{i}": 1.0, **custom},
                cores=tuple(range(cpus)), is_driver=driver)


CLUSTER = [node(2), node(1, driver=True), node(3, camera=1)]  # the driver's node comes first


def placed(s, nodes=CLUSTER):
    return [(p.actor_id, p.node_id[:2], p.cores) for p in plan_fleet(s, "r", nodes=nodes)]


def test_pack_fills_the_drivers_node_first_then_the_next():
    out = placed(spec({"name": "a", "replicas": 6}))
    assert [n for _a, n, _c in out] == ["01"] * 4 + ["02"] * 2
    # cores: auto is disjoint per node and covers the node
    on1 = [c for _a, n, c in out if n == "01"]
    assert sorted(x for c in on1 for x in c) == [0, 1, 2, 3]
    on2 = [c for _a, n, c in out if n == "02"]
    assert not set(on2[0]) & set(on2[1]) and sorted(x for c in on2 for x in c) == [0, 1, 2, 3]


def test_spread_puts_replicas_on_different_nodes_while_there_are_nodes():
    out = placed(spec({"name": "a", "replicas": 4, "spread": True}))
    assert Counter(n for _a, n, _c in out) == {"01": 2, "02": 1, "03": 1}
    assert [n for _a, n, _c in out][:3] == ["01", "02", "03"]
    # distinct nodes come before free cores: two one-CPU nodes are already busy, spread still spreads
    small = [node(1, cpus=1, driver=True), node(2, cpus=1, cam=1), node(3, cpus=1, mic=1)]
    out = placed(spec({"name": "c", "resources": {"cam": 1}}, {"name": "m", "resources": {"mic": 1}},
                      {"name": "s", "replicas": 3, "spread": True}), small)
    assert [n for a, n, _c in out if a.startswith("s-")] == ["01", "02", "03"]


def test_custom_resources_choose_the_node_and_are_a_hard_limit():
    out = placed(spec({"name": "cam", "resources": {"camera": 1}}, {"name": "other"}))
    assert out[0][1] == "03" and out[1][1] == "01"
    with pytest.raises(UserError) as e:
        plan_fleet(spec({"name": "cam", "replicas": 2, "resources": {"camera": 1}}), "r", nodes=CLUSTER)
    assert "workers[0]" in e.value.message and "camera=1" in e.value.message and "does not fit" in e.value.message
    with pytest.raises(UserError, match=r"needs resource lidar=1, which no node offers.*10\.0\.0\.1.*--resources"):
        plan_fleet(spec({"name": "x", "resources": {"lidar": 1}}), "r", nodes=CLUSTER)


def test_a_node_by_ip_hostname_or_id_prefix():
    for name in ("10.0.0.3", "host3", "03abab", "03" + "ab" * 27):
        assert placed(spec({"name": "a", "node": name}))[0][1] == "03"
    with pytest.raises(UserError, match=r"workers\[0\]\.node = '10\.9\.9\.9': is not a node of this cluster.*host|10\.0\.0\.2"):
        plan_fleet(spec({"name": "a", "node": "10.9.9.9"}), "r", nodes=CLUSTER)
    twins = [node(1, host="box", ip="10.0.0.1"), node(2, host="box", ip="10.0.0.1")]
    with pytest.raises(UserError, match="matches 2 nodes.*Ray node id"):
        plan_fleet(spec({"name": "a", "node": "box"}), "r", nodes=twins)


def test_explicit_cores_are_checked_against_their_node():
    small = [node(1, cpus=2, driver=True), node(2, cpus=8)]
    assert placed(spec({"name": "a", "cores": "4-7", "node": "host2"}), small)[0][1:] == ("02", (4, 5, 6, 7))
    with pytest.raises(UserError, match=r"workers\[0\]\.cores = '4-7': cores 4-7 not available on node 10\.0\.0\.1"):
        plan_fleet(spec({"name": "a", "cores": "4-7", "node": "host1"}), "r", nodes=small)


def test_a_node_advertising_fewer_cpus_than_cores_pins_only_that_many():
    n = Node("x" * 56, resources={"CPU": 2.0}, cores=tuple(range(8)), is_driver=True)
    plans = plan_fleet(spec({"name": "a", "replicas": 3}), "r", nodes=[n])
    assert {c for p in plans for c in p.cores} == {0, 1}
    assert sum(p.num_cpus for p in plans) <= 2


def test_gpus_are_split_per_node_or_taken_as_given():
    gpu = [node(1, driver=True), node(2, gpus=1), node(3, gpus=2)]
    auto = plan_fleet(spec({"name": "g", "replicas": 3, "device": "auto"}), "r", nodes=gpu)
    assert all(p.exec_device == "cuda" and p.node_id[:2] in ("02", "03") for p in auto)
    per_node = Counter()
    for p in auto:
        per_node[p.node_id[:2]] += p.num_gpus
    assert per_node["02"] <= 1 and per_node["03"] <= 2
    quarter = plan_fleet(spec({"name": "g", "replicas": 5, "device": "cuda", "gpus": 0.25}), "r", nodes=gpu)
    assert [p.node_id[:2] for p in quarter] == ["02"] * 4 + ["03"] and {p.num_gpus for p in quarter} == {0.25}
    with pytest.raises(UserError, match="asks for a GPU but no candidate node has one"):
        plan_fleet(spec({"name": "g", "device": "cuda"}), "r", nodes=[node(1, driver=True)])
    with pytest.raises(UserError, match="does not fit"):
        plan_fleet(spec({"name": "g", "replicas": 4, "device": "cuda", "gpus": 1}), "r", nodes=gpu)


def test_no_node_is_ever_asked_for_more_cpus_than_it_has():
    nodes = [node(1, cpus=2, driver=True), node(2, cpus=3), node(3, cpus=1, camera=2)]
    for replicas, cores, spread in itertools.product((1, 3, 7), ("auto", "0", "all", "0-1"), (False, True)):
        s = spec({"name": "a", "replicas": replicas, "cores": cores, "spread": spread},
                 {"name": "b", "replicas": 2, "resources": {"camera": 1}})
        try:
            plans = plan_fleet(s, "r", nodes=nodes)
        except UserError as e:  # '0-1' on the one-core node: a clear error is fine
            assert "cores" in e.message
            continue
        used = Counter()
        for p in plans:
            used[p.node_id] += p.num_cpus
            assert p.cores, p
        for n in nodes:
            assert used[n.node_id] <= n.resources["CPU"] + 1e-9, (replicas, cores, spread, used)


def test_unknown_nodes_check_syntax_only():
    plans = plan_fleet(spec({"name": "a", "cores": "0-63", "resources": {"camera": 1}, "node": None}), "r",
                       cores_available=None)
    assert plans[0].cores == tuple(range(64)) and plans[0].node_id is None
    with pytest.raises(UserError, match=r"workers\[0\]\.cores"):
        plan_fleet(spec({"name": "a", "cores": "x"}), "r", cores_available=None)
