"""A real multi-host run: three hosts made with network namespaces, each with its own Ray node on
its own address, and ``rayprof submit`` typed on the head.

None of the Ray nodes can import rayprof: each starts with a PYTHONPATH whose ``rayprof`` raises
ImportError (checked by ``test_the_hosts_cannot_import_rayprof``). Only the driver has it, so the
run succeeds only because rayprof ships itself to the nodes through the runtime environment.

Needs root and iproute2; skips with the reason where network namespaces cannot be made.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pytest

from tests.support import netns
from tests.support.cli import rayprof_cmd

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
RAY_CLI = Path(sys.executable).with_name("ray")
HOSTS = 3
GCS_PORT = 6379  # each host has its own ports: the namespaces do not share them
NOT_INSTALLED = "rayprof is not installed on this host"

SPEC = {
    "run": "multihost",
    "flush_interval_s": 0.5,
    "defaults": {"source": {"uri": "synthetic", "width": 96, "height": 96, "fps": 0},
                 "model": "mobilenet_v3_small", "prep": {"level": "simple", "size": 64}, "device": "cpu",
                 "batch_size": 2, "max_steps": 4, "warmup_steps": 1},
    "workers": [{"name": f"on-host{k}", "resources": {f"host{k}": 1}} for k in range(1, HOSTS + 1)],
}


def base_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_") and k != "PYTHONPATH"}
    return {**env, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1"}


def node_logs(tmp: Path, lines: int = 15) -> str:
    """The end of each host's `ray start` output, for failure messages."""
    out = []
    for k in range(1, HOSTS + 1):
        log = tmp / f"h{k}.log"
        text = log.read_text(errors="replace").splitlines() if log.exists() else ["(no log)"]
        out.append(f"--- {log.name}\n" + "\n".join(text[-lines:]))
    return "\n".join(out)


def in_host(host, *command, cwd, env, timeout) -> subprocess.CompletedProcess:
    return subprocess.run(host.argv(*command), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def on_head(head, tmp: Path, body: str) -> subprocess.CompletedProcess:
    """Python ``body`` as a Ray driver on the head host, connected (``ray``, ``json`` and ``time``
    imported), from a directory without rayprof and with no rayprof on its path."""
    code = ("import json, time, ray\n"
            f"ray.init(address='{head.ip}:{GCS_PORT}', logging_level='ERROR', log_to_driver=False)\n" + body)
    return in_host(head, sys.executable, "-c", code, cwd=str(tmp), env=base_env(), timeout=300)


def wait_for_nodes(head, tmp: Path) -> None:
    """Until all the hosts' Ray nodes have joined the head."""
    res = on_head(head, tmp, "deadline = time.time() + 120\n"
                             f"while len([n for n in ray.nodes() if n['Alive']]) < {HOSTS} and time.time() < deadline:\n"
                             "    time.sleep(0.5)\n"
                             "print(len([n for n in ray.nodes() if n['Alive']]))\n")
    alive = res.stdout.strip().splitlines()[-1:] if res.returncode == 0 else []
    assert alive == [str(HOSTS)], f"{HOSTS} Ray nodes did not come up:\n{res.stderr[-3000:]}\n{node_logs(tmp)}"


@pytest.fixture(scope="module")
def cluster():
    """Three hosts, a Ray node in each (head on host 1), none of them able to import rayprof."""
    reason = netns.unavailable()
    if reason:
        pytest.skip(reason)
    if not os.access(RAY_CLI, os.X_OK):
        pytest.skip(f"no ray CLI next to this Python ({RAY_CLI})")
    tmp = Path(tempfile.mkdtemp(prefix="rpm-", dir="/tmp"))  # short: Ray's socket paths live under it
    shadow = tmp / "shadow"
    (shadow / "rayprof").mkdir(parents=True)
    (shadow / "rayprof" / "__init__.py").write_text(f"raise ImportError({NOT_INSTALLED!r})\n")
    node_env = {**base_env(), "PYTHONPATH": str(shadow)}
    try:
        with netns.HostNetwork(HOSTS) as hosts:
            head = hosts.hosts[0]
            for k, host in enumerate(hosts.hosts, start=1):
                join = ["--head", f"--port={GCS_PORT}", "--include-dashboard=false"] if k == 1 else [
                    f"--address={head.ip}:{GCS_PORT}"]
                hosts.start(host, [str(RAY_CLI), "start", "--block", *join, f"--node-ip-address={host.ip}",
                                   f"--temp-dir={tmp}/h{k}", "--num-cpus=1", f"--resources={{\"host{k}\": 1}}",
                                   f"--object-store-memory={100 * 2**20}", "--disable-usage-stats"],
                            env=node_env, log=tmp / f"h{k}.log", cwd=str(tmp))
            wait_for_nodes(head, tmp)
            yield hosts, tmp
        names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert hosts.token not in names, f"namespaces left behind:\n{names}"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_the_hosts_cannot_import_rayprof(cluster):
    """The negative control: a plain Ray task on each host (no runtime env) fails to import rayprof,
    so the run below can only succeed by shipping it."""
    hosts, tmp = cluster
    head = hosts.hosts[0]
    res = on_head(head, tmp, (
        "@ray.remote(num_cpus=0)\n"
        "def try_import():\n"
        "    try:\n"
        "        import rayprof\n"
        "        return ray.util.get_node_ip_address(), 'imported ' + rayprof.__file__\n"
        "    except ImportError as e:\n"
        "        return ray.util.get_node_ip_address(), str(e)\n"
        f"refs = [try_import.options(resources={{f'host{{k}}': 0.01}}).remote() for k in range(1, {HOSTS + 1})]\n"
        "print(json.dumps(dict(ray.get(refs, timeout=120))))\n"))
    assert res.returncode == 0, res.stdout + res.stderr[-3000:] + "\n" + node_logs(tmp)
    answers = json.loads(res.stdout.strip().splitlines()[-1])
    assert answers == {h.ip: NOT_INSTALLED for h in hosts.hosts}


def test_submit_from_the_head_runs_a_worker_on_every_host(cluster):
    hosts, tmp = cluster
    head = hosts.hosts[0]
    spec, out = tmp / "fleet.json", tmp / "runs"
    spec.write_text(json.dumps(SPEC))  # JSON is YAML
    driver_env = {**base_env(), "PYTHONPATH": str(REPO)}  # only the driver has rayprof
    res = in_host(head, *rayprof_cmd(), "submit", str(spec), "--address", f"{head.ip}:{GCS_PORT}",
                  "--output", str(out), cwd=str(tmp), env=driver_env, timeout=540)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:] + "\n" + node_logs(tmp)

    (run_dir,) = out.glob("run=*")
    df = pd.read_parquet(run_dir)
    ips = {h.ip for h in hosts.hosts}
    assert set(df.node_ip) == ips
    for k, host in enumerate(hosts.hosts, start=1):  # each worker on its host, every step there
        rows = df[df.worker == f"on-host{k}"]
        assert set(rows.node_ip) == {host.ip}
        assert sorted(rows.step) == list(range(SPEC["defaults"]["max_steps"]))
    manifest = json.loads((run_dir / "_manifest.json").read_text())
    assert manifest["status"] == "completed"
    nodes = manifest["nodes"].values()
    assert len(nodes) == HOSTS and {n["ip"] for n in nodes} == ips
    assert all("error" not in n and n.get("cpu_model") for n in nodes), manifest["nodes"]
    assert {a["status"] for a in manifest["actors"].values()} == {"completed"}
