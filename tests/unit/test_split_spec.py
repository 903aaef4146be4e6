"""The split model from spec to plans to summary: spec errors, pair and sweep plans, pair
placement, and the per-batch join of head and tail rows. Pure: no Ray, no model runs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from rayprof.driver import preflight, resolve_splits
from rayprof.summary import split_sweeps, summary_table
from rayprof.errors import UserError
from rayprof.metrics import batches
from rayprof.placement import Node
from rayprof.plan import plan_fleet
from rayprof.spec import parse_fleet, split_points_of


def spec(*workers, **top):
    return parse_fleet({**top, "workers": [{"source": "synthetic", **w} for w in workers]})


def error(*workers, **top) -> UserError:
    with pytest.raises(UserError) as e:
        spec(*workers, **top)
    return e.value


# --------------------------------------------------------------------------- spec


def test_split_forms():
    s = spec({"name": "a", "model": {"name": "resnet50", "split": "resnet50:layer3"}},
             {"name": "b", "model": {"name": "resnet50", "split": ["none", "layer2", "resnet50:layer3"]}},
             {"name": "c", "model": "resnet18"})
    assert [split_points_of(w) for w in s.workers] == [["layer3"], [None, "layer2", "layer3"], [None]]


@pytest.mark.parametrize("worker, field, words", [
    ({"model": {"name": "resnet18", "split": "resnet50:layer3"}}, "workers[0].model.split", "names model resnet50"),
    ({"model": {"name": "resnet18", "split": ":layer3"}}, "workers[0].model.split", "MODEL:POINT"),
    ({"model": {"name": "resnet18", "split": ["all", "layer2"]}}, "workers[0].model.split", "stands alone"),
    ({"model": {"name": "resnet18", "split": []}}, "workers[0].model.split", "empty list"),
    ({"model": {"name": "resnet18", "split": ["layer2", "layer2"]}}, "workers[0].model.split", "twice"),
    ({"model": "resnet18", "pair": {"window": 3}}, "workers[0].pair", "model.split is not set"),
    ({"model": {"name": "resnet18", "split": "layer2"}, "pair": {"window": 0}}, "workers[0].pair.window", "0"),
    ({"model": {"name": "resnet18", "split": "layer2"}, "pair": {"placement": "far"}}, "workers[0].pair.placement", "same-node"),
    ({"model": {"name": "resnet18", "split": "layer2"}, "pair": {"in_process": True, "placement": "different-nodes"}},
     "workers[0].pair.placement", "one actor"),
])
def test_split_spec_errors_name_the_field(worker, field, words):
    e = error(worker)
    assert e.field == field and words in e.message, e.message


def test_sweeping_workers_list_as_many_points():
    e = error({"name": "a", "model": {"name": "resnet18", "split": ["layer1", "layer2"]}},
              {"name": "b", "model": {"name": "resnet18", "split": ["layer1", "layer2", "layer3"]}})
    assert e.field == "workers[1].model.split" and "workers[0] sweeps 2" in e.message


def test_preflight_lists_the_valid_points_and_checks_retrain_cuts():
    with pytest.raises(UserError) as e:
        preflight(spec({"model": {"name": "resnet18", "split": "layer9"}}), local=False)
    assert e.value.field == "workers[0].model.split" and "layer3" in e.value.fix
    with pytest.raises(UserError) as e:
        preflight(spec({"model": {"name": "squeezenet1_0", "split": "classifier.1", "num_classes": 3},
                        "mode": "retrain"}), local=False)
    assert "classifier" in e.value.message


def test_split_all_becomes_the_models_points():
    s = resolve_splits(spec({"model": {"name": "resnet18", "split": "all"}}))
    points = split_points_of(s.workers[0])
    assert points[0] == "conv1" and "layer3" in points and len(points) > 8


# --------------------------------------------------------------------------- plans


def test_a_split_worker_is_a_head_and_a_tail_per_replica():
    s = spec({"name": "s", "model": {"name": "resnet18", "split": "layer2"}, "replicas": 2, "cores": "0-1",
              "pair": {"tail_cores": "2"}, "device": "cuda", "gpus": 0.5})
    plans = plan_fleet(s, "r", cores_available=[0, 1, 2, 3], cuda_available=True, gpus=1)
    assert [(p.actor_id, p.role, p.peer) for p in plans] == [
        ("s-0-head", "head", "s-0-tail"), ("s-0-tail", "tail", "s-0-head"),
        ("s-1-head", "head", "s-1-tail"), ("s-1-tail", "tail", "s-1-head")]
    head, tail = plans[0], plans[1]
    assert head.pair_id == tail.pair_id == "s-0" and head.split_point == tail.split_point == "layer2"
    assert (head.exec_device, head.num_gpus, head.cores) == ("cpu", 0.0, (0, 1))  # the head on the CPU
    assert (tail.exec_device, tail.num_gpus, tail.cores) == ("cuda", 0.5, (2,))  # the tail on the GPU
    assert head.sweep_point is None and {p.phase for p in plans} == {0}


def test_in_process_split_is_one_actor():
    s = spec({"name": "s", "model": {"name": "resnet18", "split": "layer2"}, "pair": {"in_process": True}})
    (p,) = plan_fleet(s, "r", cores_available=[0, 1])
    assert (p.role, p.split_point, p.head_device, p.pair_id) == ("split", "layer2", "cpu", None)


def test_a_sweep_runs_its_points_as_phases_beside_the_others():
    s = spec({"name": "s", "model": {"name": "resnet18", "split": ["none", "layer2"]}},
             {"name": "b", "model": "resnet18"})
    plans = plan_fleet(s, "r", cores_available=[0, 1, 2])
    assert [(p.phase, p.actor_id, p.sweep_point) for p in plans] == [
        (0, "s-p0-0", "split=none"), (0, "b-p0-0", "split=none"),
        (1, "s-p1-0-head", "split=layer2"), (1, "s-p1-0-tail", "split=layer2"), (1, "b-p1-0", "split=layer2")]
    # each phase has the machine to itself: its core sets are disjoint within it
    for phase in (0, 1):
        cores = [c for p in plans if p.phase == phase for c in p.cores]
        assert len(cores) == len(set(cores))


NODES = [Node("n-cpu", ip="10.0.0.1", resources={"CPU": 4, "GPU": 0}, cores=(0, 1, 2, 3), is_driver=True),
         Node("n-gpu", ip="10.0.0.2", resources={"CPU": 4, "GPU": 1}, cores=(0, 1, 2, 3))]


@pytest.mark.parametrize("placement, device, where", [
    ("any", "cuda", ("n-cpu", "n-gpu")),
    ("different-nodes", "cpu", ("n-cpu", "n-gpu")),
    ("same-node", "cpu", ("n-cpu", "n-cpu")),
    ("any", "cpu", ("n-cpu", "n-cpu")),
])
def test_pair_placement(placement, device, where):
    s = spec({"name": "s", "model": {"name": "resnet18", "split": "layer2"}, "device": device,
              "pair": {"placement": placement}})
    head, tail = plan_fleet(s, "r", nodes=NODES)
    assert (head.node_id, tail.node_id) == where


def test_same_node_pair_that_cannot_fit_says_why():
    s = spec({"name": "s", "model": {"name": "resnet18", "split": "layer2"}, "device": "cuda",
              "pair": {"placement": "same-node"}})
    with pytest.raises(UserError) as e:
        plan_fleet(s, "r", nodes=NODES)
    assert e.value.field == "workers[0].pair.placement" and "lacks a GPU" in e.value.message
    one = [NODES[0]]
    s = spec({"name": "s", "model": {"name": "resnet18", "split": "layer2"}, "pair": {"placement": "different-nodes"}})
    with pytest.raises(UserError) as e:
        plan_fleet(s, "r", nodes=one)
    assert "no node but the head's" in e.value.message


# --------------------------------------------------------------------------- batches and verdicts


def rows(role, steps, t0_ms, total_ms, *, worker="s", point="layer2", sweep=None, exec_ms=10.0, transfer=1.0,
         wait=0.5, pair="s-0", frames=4):
    n = len(steps)
    return pd.DataFrame({
        "run_id": "r", "worker": worker, "role": role, "pair_id": pair if role in ("head", "tail") else None,
        "actor_id": f"{pair}-{role}", "sweep_point": sweep, "split_point": point, "step": steps,
        "warmup": [False] * n, "t_start": pd.to_datetime(np.array(t0_ms) * 1_000_000, utc=True),
        "read_ms": 1.0 if role != "tail" else np.nan, "prep_ms": 2.0 if role != "tail" else np.nan,
        "exec_ms": exec_ms, "transfer_ms": transfer if role != "full" else np.nan,
        "wait_ms": wait if role in ("head", "tail") else np.nan, "total_ms": total_ms, "frames": frames,
        "loss": np.nan, "frame_age_ms": 5.0 if role == "head" else 50.0, "node_ip": "10.0.0.1", "node_id": "n1"})


def test_batches_join_head_and_tail_end_to_end():
    head = rows("head", [0, 1, 2], [0, 100, 200], 50.0, exec_ms=40.0, transfer=2.0, wait=3.0)
    tail = rows("tail", [0, 1], [40, 140], 70.0, exec_ms=60.0, transfer=4.0, wait=6.0)  # step 2 never reached the tail
    b = batches(pd.concat([head, tail], ignore_index=True))
    assert list(b["step"]) == [0, 1] and set(b["role"]) == {"pair"}
    assert list(b["total_ms"]) == [110.0, 110.0]  # tail end (40 + 70) - head start (0)
    assert list(b["transfer_ms"]) == [6.0, 6.0] and list(b["head_ms"]) == [40.0, 40.0] and list(b["tail_ms"]) == [60.0, 60.0]
    assert list(b["head_wait_ms"]) == [3.0, 3.0] and list(b["tail_wait_ms"]) == [6.0, 6.0]
    assert list(b["frame_age_ms"]) == [50.0, 50.0]  # capture → the tail's result
    assert list(b["queue_ms"]) == [0.0, 0.0]  # the tail took each batch (40 + 6) before the head handed it off (50)


def test_queue_is_the_time_a_batch_sat_in_the_tails_inbox():
    head = rows("head", [0, 1], [0, 50], 50.0)  # handed off at 50 and 100
    tail = rows("tail", [0, 1], [40, 140], 100.0, wait=10.0)  # took them at 50 and 150: batch 1 sat 50 ms
    b = batches(pd.concat([head, tail], ignore_index=True))
    assert list(b["queue_ms"]) == [0.0, 50.0] and list(b["total_ms"]) == [140.0, 190.0]


def test_sweep_verdict_names_the_fastest_and_the_busiest_cut():
    full = rows("full", [0, 1, 2], [0, 100, 200], 100.0, point=None, sweep="split=none")  # 12 frames / 0.3 s
    head = rows("head", [0, 1, 2], [1000, 1050, 1100], 40.0, sweep="split=layer2")
    tail = rows("tail", [0, 1, 2], [1040, 1090, 1140], 80.0, sweep="split=layer2")  # e2e 120 ms, ends at 1220
    df = pd.concat([full, head, tail], ignore_index=True)
    (v,) = split_sweeps(df)
    assert (v["lowest_latency"], v["highest_throughput"]) == ("none", "layer2")
    assert v["latency_p50_ms"] == pytest.approx(100.0)
    assert v["fps"] == pytest.approx(12 / 0.22)


def test_summary_table_shows_a_pair_per_batch():
    from rich.console import Console

    df = pd.concat([rows("head", [0, 1], [0, 100], 50.0), rows("tail", [0, 1], [40, 140], 70.0)], ignore_index=True)
    con = Console(width=200, record=True)
    con.print(summary_table(df, {"s": "completed"}))
    text = con.export_text()
    for stage in ("exec (head)", "exec (tail)", "transfer", "queue", "wait (head)", "wait (tail)", "e2e"):
        assert stage in text
    assert " total " not in text


def test_concurrent_fps_counts_the_window_where_every_actor_ran():
    from rayprof.metrics import concurrent_fps

    # actor a: 10 steps of 100 ms from t=0; actor b starts 0.5 s later: 10 steps from t=0.5 s
    a = pd.DataFrame({"actor_id": "a", "t_start": pd.to_datetime(np.arange(10) * 100_000_000, utc=True),
                      "total_ms": 100.0, "frames": 4})
    b = a.assign(actor_id="b", t_start=a["t_start"] + pd.Timedelta(milliseconds=500))
    both = pd.concat([a, b], ignore_index=True)
    assert concurrent_fps(both) == pytest.approx(80.0)  # 40 FPS each, together, in [0.5 s, 1.0 s]
    assert concurrent_fps(a) == pytest.approx(40.0)
