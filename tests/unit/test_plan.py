"""Spec → plans: replicas, names, devices, core allocation and Ray CPU shares (pure)."""

import re
from collections import Counter
from datetime import datetime, timezone

import pytest

from rayprof.errors import UserError
from rayprof.plan import cpu_request, make_run_id, plan_fleet
from rayprof.spec import parse_fleet


def spec(*workers, **defaults):
    return parse_fleet({"run": "p", "defaults": {"source": "v.mp4", "model": "resnet18", **defaults},
                        "workers": list(workers)})


def test_replicas_expand_in_order_with_actor_ids():
    plans = plan_fleet(spec({"name": "a", "replicas": 2}, {"name": "b"}), "r1", cores_available=[0, 1, 2, 3],
                       cuda_available=False)
    assert [(p.worker, p.replica, p.actor_id) for p in plans] == [("a", 0, "a-0"), ("a", 1, "a-1"), ("b", 0, "b-0")]
    assert {p.run_id for p in plans} == {"r1"}
    assert plans[0].source.uri == "v.mp4" and plans[2].source.field == "workers[1].source.uri"


def test_auto_cores_are_disjoint_while_cores_last():
    plans = plan_fleet(spec({"name": "a", "replicas": 2}, {"name": "b"}), "r", cores_available=list(range(8)),
                       cuda_available=False)
    sets = [set(p.cores) for p in plans]
    assert all(sets) and not (sets[0] & sets[1]) and not (sets[1] & sets[2]) and not (sets[0] & sets[2])
    assert set().union(*sets) == set(range(8))
    assert sum(p.num_cpus for p in plans) <= 8


def test_more_actors_than_cores_share_them_and_fractional_cpus():
    plans = plan_fleet(spec({"name": "a", "replicas": 4}), "r", cores_available=[0, 1], cuda_available=False)
    assert [len(p.cores) for p in plans] == [1, 1, 1, 1]
    assert Counter(c for p in plans for c in p.cores) == {0: 2, 1: 2}
    assert [p.num_cpus for p in plans] == [0.5] * 4


def test_explicit_cores_are_kept_and_auto_takes_the_rest():
    plans = plan_fleet(spec({"name": "fixed", "cores": "0-1"}, {"name": "auto", "replicas": 2}), "r",
                       cores_available=[0, 1, 2, 3], cuda_available=False)
    assert plans[0].cores == (0, 1) and plans[0].num_cpus == 2.0
    assert {c for p in plans[1:] for c in p.cores} == {2, 3}
    with pytest.raises(UserError, match=r"workers\[0\]\.cores"):
        plan_fleet(spec({"name": "x", "cores": "7"}), "r", cores_available=[0, 1], cuda_available=False)


def test_devices_resolve_auto_only():
    s = spec({"name": "a"}, {"name": "b", "device": "cpu", "prep": {"device": "auto"}})
    cpu = plan_fleet(s, "r", cores_available=[0], cuda_available=False)
    gpu = plan_fleet(s, "r", cores_available=[0], cuda_available=True)
    assert [(p.exec_device, p.prep_device) for p in cpu] == [("cpu", "cpu"), ("cpu", "cpu")]
    assert [(p.exec_device, p.prep_device) for p in gpu] == [("cuda", "cpu"), ("cpu", "cuda")]


def test_cpu_request_is_a_share_ray_accepts():
    assert cpu_request((0, 1, 2), Counter({0: 2, 1: 1, 2: 1})) == 2.0  # 2.5 → a whole number above 1
    assert cpu_request((0,), Counter({0: 3})) == pytest.approx(0.3333)
    assert cpu_request((0, 1), Counter({0: 1, 1: 1})) == 2.0


def test_run_id_is_sortable_and_path_safe():
    rid = make_run_id("fleet", datetime(2026, 11, 24, 1, 2, 3, tzinfo=timezone.utc), suffix="ab12")
    assert rid == "fleet-20261124-010203-ab12"
    assert re.fullmatch(r"fleet-\d{8}-\d{6}-[0-9a-f]{4}", make_run_id("fleet"))
