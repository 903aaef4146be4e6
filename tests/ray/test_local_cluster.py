"""cluster/local_cluster.sh really starts a several-node Ray on this machine, and stops all of it.

Runs on its own port block and temp dir, so it does not touch another Ray on the machine, and
connects from a child process so this test process's Ray state stays as it was.
"""

import json
import os
import subprocess
import sys
import time

import pytest

from tests.support.local_cluster import SCRIPT, alive, sessions
from tests.support.local_cluster import cluster_env as local_cluster_env

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster_env():
    with local_cluster_env() as ce:
        yield ce


def test_start_two_nodes_connect_and_stop(cluster_env):
    env, port, state, sids = cluster_env
    run = subprocess.run(["bash", str(SCRIPT), "start", "2", "--num-cpus", "1", "--object-store-mb", "100"],
                         env=env, capture_output=True, text=True, timeout=120)
    sids.extend(sessions(state))
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"export RAY_ADDRESS=127.0.0.1:{port}" in run.stdout
    assert len(sids) == 2

    probe = (  # each node's resources, and the cores its worker processes may use
        "import json, os, ray\n"
        f"ray.init(address='127.0.0.1:{port}', logging_level='ERROR', log_to_driver=False)\n"
        "nodes = [n for n in ray.nodes() if n['Alive']]\n"
        "cores = ray.remote(num_cpus=0)(lambda: sorted(os.sched_getaffinity(0)))\n"
        "from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy as On\n"
        "mine = [ray.get(cores.options(scheduling_strategy=On(n['NodeID'], soft=False)).remote()) for n in nodes]\n"
        "print(json.dumps([n['Resources'] for n in nodes]))\n"
        "print(json.dumps(mine))\n"
        "ray.shutdown()\n")
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=90)
    assert out.returncode == 0, out.stderr[-3000:]
    resources = json.loads(out.stdout.strip().splitlines()[-2])
    cores = json.loads(out.stdout.strip().splitlines()[-1])
    if len(os.sched_getaffinity(0)) >= 2:  # each node on cores of its own, as separate machines
        assert sorted(cores) == [[0], [1]], cores
    assert len(resources) == 2
    assert sorted(k for r in resources for k in r if k in ("node0", "node1")) == ["node0", "node1"]
    assert all(r["CPU"] == 1 for r in resources)

    again = subprocess.run(["bash", str(SCRIPT), "start", "1"], env=env, capture_output=True, text=True, timeout=30)
    assert again.returncode != 0 and "already running" in again.stderr

    # `ray status` shows the autoscaler's view, refreshed every few seconds: it may lag the GCS
    for _ in range(12):
        status = subprocess.run(["bash", str(SCRIPT), "status"], env=env, capture_output=True, text=True, timeout=60)
        if status.returncode != 0 or "node1" in status.stdout:
            break
        time.sleep(5)
    assert status.returncode == 0 and "node1" in status.stdout, status.stdout + status.stderr

    stop = subprocess.run(["bash", str(SCRIPT), "stop"], env=env, capture_output=True, text=True, timeout=60)
    assert stop.returncode == 0 and "stopped 2 Ray node(s)" in stop.stdout
    assert not alive(sids)
    assert not state.exists()
