"""Several hosts on one machine: Linux network namespaces joined by veth pairs (iproute2, root).

Each host is a network namespace with ``lo`` up and ``eth0`` at ``10.231.7.K/24``. The veths'
other ends hang on a bridge that lives in a namespace of its own (the "switch"), so the machine's
own namespace gets no interface, no address and no route: the hosts reach each other and nothing
else, and the machine's firewall (Docker's FORWARD policy, br_netfilter) never sees their traffic.
Names carry a random token, so runs side by side do not meet.

Processes started in a host (:meth:`HostNetwork.start`) run in sessions of their own;
:meth:`HostNetwork.close` ends them (SIGTERM, then SIGKILL, then whatever else is left in the
namespaces) and deletes the namespaces, which deletes the bridge and the veths with them.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

SUBNET = "10.231.7"  # private, and only inside the namespaces made here


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and res.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {res.stderr.strip()}")
    return res


def unavailable() -> str | None:
    """Why hosts cannot be made here (a skip reason), or None: needs root, iproute2, and a kernel
    that makes network namespaces, veth pairs and bridges (probed once, then deleted)."""
    if os.geteuid() != 0:
        return "network namespaces need root (run as root, or in CI)"
    if shutil.which("ip") is None:
        return "no `ip` command (install iproute2)"
    probe = f"rpprobe{secrets.token_hex(3)}"
    try:
        _ip("netns", "add", probe)
    except RuntimeError as e:
        return f"cannot make a network namespace: {e}"
    try:
        _ip("-n", probe, "link", "add", "br0", "type", "bridge")
        _ip("-n", probe, "link", "add", "v0", "type", "veth", "peer", "name", "v1")
    except RuntimeError as e:
        return f"cannot make a bridge or a veth pair in a network namespace: {e}"
    finally:
        _ip("netns", "del", probe, check=False)
    return None


@dataclass(frozen=True)
class Host:
    netns: str
    ip: str

    def argv(self, *command: str) -> list[str]:
        """``command`` run inside this host."""
        return ["ip", "netns", "exec", self.netns, *command]


@dataclass
class HostNetwork:
    """``count`` hosts on one switch; a context manager that always tears them down."""

    count: int
    token: str = field(default_factory=lambda: secrets.token_hex(3))
    hosts: list[Host] = field(default_factory=list)
    procs: list[subprocess.Popen] = field(default_factory=list)

    @property
    def switch(self) -> str:
        return f"rp{self.token}sw"

    def __enter__(self) -> HostNetwork:
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _build(self) -> None:
        _ip("netns", "add", self.switch)
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")
        for k in range(1, self.count + 1):
            host = Host(f"rp{self.token}h{k}", f"{SUBNET}.{k}")
            _ip("netns", "add", host.netns)
            self.hosts.append(host)
            _ip("-n", host.netns, "link", "set", "lo", "up")
            _ip("-n", self.switch, "link", "add", f"port{k}", "type", "veth", "peer", "name", "eth0", "netns", host.netns)
            _ip("-n", self.switch, "link", "set", f"port{k}", "master", "br0", "up")
            _ip("-n", host.netns, "addr", "add", f"{host.ip}/24", "dev", "eth0")
            _ip("-n", host.netns, "link", "set", "eth0", "up")

    def start(self, host: Host, command: list[str], env: dict, log: Path, cwd: str | None = None) -> subprocess.Popen:
        """Start ``command`` in ``host``, in a session of its own, output to ``log``."""
        with open(log, "ab") as out:
            proc = subprocess.Popen(host.argv(*command), env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        self.procs.append(proc)
        return proc

    def pids(self) -> list[int]:
        """Every process in the hosts' namespaces (started here, or by what was started here)."""
        out = []
        for netns in [h.netns for h in self.hosts] + [self.switch]:
            res = _ip("netns", "pids", netns, check=False)
            out += [int(p) for p in res.stdout.split()]
        return out

    def stop(self, grace_s: float = 5.0) -> None:
        """End every process in the hosts: SIGTERM to the sessions started here, up to ``grace_s``
        for a clean exit, then SIGKILL to whatever is left."""
        for proc in self.procs:
            _signal_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while self.pids() and time.monotonic() < deadline:
            time.sleep(0.2)
        left = self.pids()
        for proc in self.procs:
            _signal_group(proc.pid, signal.SIGKILL)
        for pid in left:  # a process that left its session is still in our namespace
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass

    def close(self) -> None:
        """Stop the processes, then delete the namespaces (their veths and the bridge go with them)."""
        self.stop()
        for netns in [h.netns for h in self.hosts] + [self.switch]:
            _ip("netns", "del", netns, check=False)
        self.hosts.clear()


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
