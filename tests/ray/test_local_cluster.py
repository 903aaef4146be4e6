"""cluster/local_cluster.sh really starts a several-node Ray on this machine, and stops all of it.

Runs on its own port block and temp dir, so it does not touch another Ray on the machine, and
connects from a child process so this test process's Ray state stays as it was.
"""

import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).resolve().parents[2] / "cluster" / "local_cluster.sh"
RAY_CLI = Path(sys.executable).with_name("ray")


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("", port))
        except OSError:
            return False
    return True


def _port_block() -> int:
    """A base port whose block (P..P+2, P+10..P+25, P+1000..P+1399 for 2 nodes) is free now."""
    for _ in range(50):
        p = random.randrange(11000, 19000, 10)
        if all(_free(q) for q in [p, p + 1, p + 2, *range(p + 10, p + 26), p + 1000, p + 1200]):
            return p
    pytest.skip("no free port block for a local Ray cluster")


def _sessions(state: Path) -> list[int]:
    if not state.is_file():
        return []
    return [int(f[2]) for f in (line.split() for line in state.read_text().splitlines()) if f[:1] == ["node"]]


def _alive(sids: list[int]) -> list[str]:
    out = subprocess.run(["ps", "-eo", "pid=,sid=,args="], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if len(line.split()) > 1 and int(line.split()[1]) in sids]


@pytest.fixture
def cluster_env():
    if not os.access(RAY_CLI, os.X_OK):
        pytest.skip(f"no ray CLI next to this Python ({RAY_CLI})")
    for tool in ("setsid", "pgrep", "pkill", "ps"):
        if shutil.which(tool) is None:
            pytest.skip(f"local_cluster.sh needs {tool}")
    tmp = tempfile.mkdtemp(prefix="rpl-", dir="/tmp")  # short: Ray's socket paths live under it
    port = _port_block()
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    env.update(RAY=str(RAY_CLI), RAYPROF_CLUSTER_PORT=str(port), RAYPROF_CLUSTER_TMP=tmp,
               RAYPROF_CLUSTER_STOP_GRACE="1", RAY_USAGE_STATS_ENABLED="0")
    state = Path(tmp) / "local_cluster.state"
    sids: list[int] = []
    try:
        yield env, port, state, sids
    finally:
        sids.extend(s for s in _sessions(state) if s not in sids)
        subprocess.run(["bash", str(SCRIPT), "stop"], env=env, capture_output=True, timeout=60)
        left = _alive(sids)
        for sid in sids:  # last resort, only our own sessions
            subprocess.run(["pkill", "-KILL", "-s", str(sid)], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
        assert not left, "local_cluster.sh stop left processes:\n" + "\n".join(left)


def test_start_two_nodes_connect_and_stop(cluster_env):
    env, port, state, sids = cluster_env
    run = subprocess.run(["bash", str(SCRIPT), "start", "2", "--num-cpus", "1", "--object-store-mb", "100"],
                         env=env, capture_output=True, text=True, timeout=120)
    sids.extend(_sessions(state))
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"export RAY_ADDRESS=127.0.0.1:{port}" in run.stdout
    assert len(sids) == 2

    probe = (
        "import json, ray\n"
        f"ray.init(address='127.0.0.1:{port}', logging_level='ERROR', log_to_driver=False)\n"
        "nodes = [n for n in ray.nodes() if n['Alive']]\n"
        "print(json.dumps([n['Resources'] for n in nodes]))\n"
        "ray.shutdown()\n")
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-3000:]
    resources = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(resources) == 2
    assert sorted(k for r in resources for k in r if k in ("node0", "node1")) == ["node0", "node1"]
    assert all(r["CPU"] == 1 for r in resources)

    again = subprocess.run(["bash", str(SCRIPT), "start", "1"], env=env, capture_output=True, text=True, timeout=30)
    assert again.returncode != 0 and "already running" in again.stderr

    status = subprocess.run(["bash", str(SCRIPT), "status"], env=env, capture_output=True, text=True, timeout=60)
    assert status.returncode == 0 and "node1" in status.stdout, status.stdout + status.stderr

    stop = subprocess.run(["bash", str(SCRIPT), "stop"], env=env, capture_output=True, text=True, timeout=60)
    assert stop.returncode == 0 and "stopped 2 Ray node(s)" in stop.stdout
    assert not _alive(sids)
    assert not state.exists()
