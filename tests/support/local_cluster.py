"""cluster/local_cluster.sh from tests, safely beside any other Ray on the machine: a free port
block of its own, a short temp dir of its own, and a stop that ends only this cluster's sessions
(never `ray stop`, which would end every Ray here)."""

import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "cluster" / "local_cluster.sh"
RAY_CLI = Path(sys.executable).with_name("ray")


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("", port))
        except OSError:
            return False
    return True


def port_block() -> int:
    """A base port whose block (P..P+2, P+10..P+25, P+1000..P+1399 for 2 nodes) is free now."""
    for _ in range(50):
        p = random.randrange(11000, 19000, 10)
        if all(_free(q) for q in [p, p + 1, p + 2, *range(p + 10, p + 26), p + 1000, p + 1200]):
            return p
    pytest.skip("no free port block for a local Ray cluster")


def sessions(state: Path) -> list[int]:
    """The session ids the script recorded for its nodes."""
    if not state.is_file():
        return []
    return [int(f[2]) for f in (line.split() for line in state.read_text().splitlines()) if f[:1] == ["node"]]


def alive(sids: list[int]) -> list[str]:
    """``ps`` lines of the processes still running in these sessions."""
    out = subprocess.run(["ps", "-eo", "pid=,sid=,args="], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if len(line.split()) > 1 and int(line.split()[1]) in sids]


@contextmanager
def cluster_env():
    """``(env, port, state, sids)`` for running the script; on exit its cluster is stopped (the
    script's stop, then SIGKILL to any session of ours still alive), the temp dir removed, and
    it fails if the script's stop left a process behind. Add session ids you start to ``sids``."""
    if not os.access(RAY_CLI, os.X_OK):
        pytest.skip(f"no ray CLI next to this Python ({RAY_CLI})")
    for tool in ("setsid", "pgrep", "pkill", "ps"):
        if shutil.which(tool) is None:
            pytest.skip(f"local_cluster.sh needs {tool}")
    tmp = tempfile.mkdtemp(prefix="rpl-", dir="/tmp")  # short: Ray's socket paths live under it
    port = port_block()
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    env.update(RAY=str(RAY_CLI), RAYPROF_CLUSTER_PORT=str(port), RAYPROF_CLUSTER_TMP=tmp,
               RAYPROF_CLUSTER_STOP_GRACE="1", RAY_USAGE_STATS_ENABLED="0")
    state = Path(tmp) / "local_cluster.state"
    sids: list[int] = []
    try:
        yield env, port, state, sids
    finally:
        sids.extend(s for s in sessions(state) if s not in sids)
        subprocess.run(["bash", str(SCRIPT), "stop"], env=env, capture_output=True, timeout=60)
        left = alive(sids)
        for sid in sids:  # last resort, only our own sessions
            subprocess.run(["pkill", "-KILL", "-s", str(sid)], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
        assert not left, "local_cluster.sh stop left processes:\n" + "\n".join(left)
