"""The sweep block: grid points in key order, the workers it applies to, nodes per point, and
errors that name the sweep key. Pure: no Ray, no model runs."""

from __future__ import annotations

import pytest

from rayprof.driver import preflight
from rayprof.errors import UserError
from rayprof.placement import Node
from rayprof.plan import plan_fleet
from rayprof.spec import parse_fleet
from rayprof.sweep import points


def spec(sweep, *workers):
    workers = workers or ({"name": "a", "model": "resnet18"},)
    return parse_fleet({"sweep": sweep, "workers": [{"source": "synthetic", **w} for w in workers]})


def test_grid_points_in_key_order_with_labels():
    s = spec({"replicas": [1, 2], "batch_size": [4, 8]})
    ps = points(s)
    assert [p.label for p in ps] == ["batch_size=4,replicas=1", "batch_size=4,replicas=2",
                                     "batch_size=8,replicas=1", "batch_size=8,replicas=2"]
    assert [(p.spec.workers[0].batch_size, p.spec.workers[0].replicas) for p in ps] == [(4, 1), (4, 2), (8, 1), (8, 2)]
    assert all(p.spec.sweep is None for p in ps)


def test_the_sweep_applies_to_the_workers_it_names():
    s = spec({"model": ["resnet18", "mobilenet_v3_small"], "workers": ["a"]},
             {"name": "a", "model": "resnet50"}, {"name": "b", "model": "resnet50"})
    assert [[w.model.name for w in p.spec.workers] for p in points(s)] == [["resnet18", "resnet50"],
                                                                             ["mobilenet_v3_small", "resnet50"]]


def test_split_in_a_sweep_cuts_each_point():
    s = spec({"split": ["none", "resnet18:layer2"]})
    assert [(p.label, p.spec.workers[0].model.split) for p in points(s)] == [("split=none", None),
                                                                              ("split=resnet18:layer2", "layer2")]


def test_plans_per_point_and_nodes_per_point():
    nodes = [Node(f"n{k}", ip=f"10.0.0.{k}", resources={"CPU": 2}, cores=(0, 1), is_driver=k == 0) for k in range(3)]
    s = spec({"nodes": [1, 3]}, {"name": "a", "model": "resnet18", "replicas": 3, "spread": True})
    plans = plan_fleet(s, "r", nodes=nodes)
    assert [(p.phase, p.actor_id, p.sweep_point, p.node_id) for p in plans] == [
        (0, "a-p0-0", "nodes=1", "n0"), (0, "a-p0-1", "nodes=1", "n0"), (0, "a-p0-2", "nodes=1", "n0"),
        (1, "a-p1-0", "nodes=3", "n0"), (1, "a-p1-1", "nodes=3", "n1"), (1, "a-p1-2", "nodes=3", "n2")]


@pytest.mark.parametrize("sweep, workers, field, words", [
    ({}, (), "sweep", "lists no values"),
    ({"batch_size": []}, (), "sweep.batch_size", "empty list"),
    ({"batch_size": [4, 4]}, (), "sweep.batch_size", "twice"),
    ({"batch_size": [0, 4]}, (), "sweep.batch_size", "greater than or equal to 1"),
    ({"workers": ["x"], "batch_size": [4]}, (), "sweep.workers", "is not a worker"),
    ({"split": ["layer2"]}, ({"name": "a", "model": {"name": "resnet18", "split": ["layer1", "layer2"]}},),
     "sweep", "sweeps twice"),
])
def test_sweep_errors_name_the_key(sweep, workers, field, words):
    with pytest.raises(UserError) as e:
        points(spec(sweep, *workers))
    assert e.value.field == field and words in e.value.message, e.value.message


def test_more_nodes_than_the_cluster_has():
    with pytest.raises(UserError) as e:
        plan_fleet(spec({"nodes": [1, 2]}), "r", cores_available=[0, 1])
    assert e.value.field == "sweep.nodes" and "more nodes than the cluster has (1)" in e.value.message


def test_a_bad_swept_value_is_named_by_its_sweep_key():
    with pytest.raises(UserError) as e:
        preflight(spec({"model": ["resnet18", "resnet5000"]}), local=False)
    assert e.value.field == "sweep.model" and e.value.value == "resnet5000"
    with pytest.raises(UserError) as e:
        preflight(spec({"split": ["layer2", "layer9"]}), local=False)
    assert e.value.field == "sweep.split" and "layer3" in e.value.fix


def test_a_worker_setting_a_swept_value_clashes_with_is_named_with_both():
    """pipeline: overlap is not for a split pair: a sweep that splits such a worker names the
    worker's field and value, the swept value that splits it, and the ways out."""
    s = spec({"batch_size": [4, 8], "split": ["none", "resnet18:layer2"]},
             {"name": "a", "model": "resnet18"}, {"name": "b", "model": "resnet18", "pipeline": "overlap"})
    with pytest.raises(UserError) as e:
        points(s)
    assert (e.value.field, e.value.value) == ("workers[1].pipeline", "overlap")
    assert "at sweep.split = 'resnet18:layer2'" in e.value.problem and "batch_size" not in e.value.problem
    assert e.value.fix == ("set pair.in_process: true (both halves in one actor), or pipeline: serial, "
                           "or leave 'resnet18:layer2' out of sweep.split")


def test_scaling_efficiency_strong_weak_and_replicas():
    import pandas as pd

    from rayprof.sweep import scaling

    per_point = pd.DataFrame({"sweep_point": ["nodes=1,replicas=1", "nodes=1,replicas=2", "nodes=2,replicas=1",
                                              "nodes=2,replicas=2"], "fps": [10.0, 15.0, 10.0, 19.0]})
    out = scaling(per_point).set_index("sweep_point")
    assert out.loc["nodes=2,replicas=2", "strong"] == pytest.approx(19 / (2 * 15))  # same fleet on 2 nodes
    assert out.loc["nodes=2,replicas=2", "weak"] == pytest.approx(19 / (2 * 10))  # one replica per node
    assert out.loc["nodes=1,replicas=2", "replicas"] == pytest.approx(15 / (2 * 10))
    assert out.loc["nodes=1,replicas=1", "strong"] == pytest.approx(1.0)
    assert pd.isna(out.loc["nodes=2,replicas=1", "weak"])  # half a replica per node was not swept
