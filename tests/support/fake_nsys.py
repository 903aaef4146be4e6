"""A stand-in for Nsight Systems' ``nsys`` (there is no real one here), as Ray's own tests do.

* ``nsys --version`` prints a version line.
* ``nsys profile [options] <command…>`` runs the command, waits for it, and then, as nsys does
  when its target exits, writes a small report at the ``-o``/``--output`` path (``%p`` → the
  command's pid, ``%h`` → the host name, ``.nsys-rep`` added). Options come in Ray's forms,
  ``-t cuda,nvtx`` and ``--name=value``. SIGTERM/SIGINT are passed on to the command. The
  exit status is the command's. ``--fake-no-report=true`` (not an nsys option) writes no report:
  a report that never comes.

:func:`install` writes an executable ``nsys`` into a folder, to be put first on the PATH of the
Ray nodes (the raylet starts its workers with its own environment).
"""

from __future__ import annotations

import json
import re
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

VERSION = "NVIDIA Nsight Systems version 2099.1.1.0-fake"
MAGIC = b"FAKE-NSYS-REP\n"


def install(folder: Path) -> Path:
    """An executable ``folder/nsys`` that runs this file with this interpreter."""
    exe = Path(folder) / "nsys"
    exe.write_text(f"#!/bin/sh\nexec '{sys.executable}' '{Path(__file__).resolve()}' \"$@\"\n")
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return exe


def parse_profile(args: list[str]) -> tuple[dict[str, str], list[str]]:
    """``[options…] command…`` → ({option: value}, command)."""
    opts: dict[str, str] = {}
    i = 0
    while i < len(args) and args[i].startswith("-"):
        arg = args[i]
        if arg.startswith("--"):
            name, _, value = arg[2:].partition("=")
            opts[name] = value
            i += 1
        else:
            opts[arg[1:]] = args[i + 1]
            i += 2
    return opts, args[i:]


def output_path(pattern: str, pid: int) -> Path:
    name = re.sub(r"%[ph%]", lambda m: {"%p": str(pid), "%h": socket.gethostname(), "%%": "%"}[m.group(0)], pattern)
    return Path(name if name.endswith(".nsys-rep") else name + ".nsys-rep")


def profile(args: list[str]) -> int:
    opts, command = parse_profile(args)
    if not command:
        print("fake nsys: no application to profile", file=sys.stderr)
        return 1
    child = subprocess.Popen(command)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: child.send_signal(signum))
    code = child.wait()
    if opts.get("fake-no-report") == "true":
        return code
    report = output_path(opts.get("o") or opts.get("output") or "report%p", child.pid)
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_bytes(MAGIC + json.dumps({"options": opts, "command": command, "pid": child.pid,
                                           "returncode": code}).encode() + b"\n")
    return code


def main(argv: list[str]) -> int:
    if argv[:1] == ["--version"]:
        print(VERSION)
        return 0
    if argv[:1] == ["profile"]:
        return profile(argv[1:])
    print(f"fake nsys: unsupported arguments {argv}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
