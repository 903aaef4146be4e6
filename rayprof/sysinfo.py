"""Host, GPU and library facts for the run manifest (cheap, never imports Ray)."""

from __future__ import annotations

import os
import platform
import socket
from importlib import metadata
from pathlib import Path

from .affinity import format_cores

LIBRARIES = ("rayprof", "torch", "torchvision", "ray", "numpy", "pandas", "pyarrow",
             "opencv-python-headless", "opencv-python", "pydantic", "duckdb", "nvtx")


def library_versions() -> dict[str, str]:
    out = {}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def _nvidia_driver() -> str | None:
    try:
        text = Path("/proc/driver/nvidia/version").read_text()
    except OSError:
        return None
    for token in text.split():
        if token.count(".") >= 1 and token.replace(".", "").isdigit():
            return token
    return None


def gpu_info() -> list[dict]:
    from .checks import gpu_count

    try:
        if gpu_count() == 0:  # without torch where there can be no GPU
            return []
    except ImportError:
        return []
    import torch

    gpus = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        gpus.append({"index": i, "name": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
                     "capability": f"{props.major}.{props.minor}"})
    return gpus


def host_info() -> dict:
    """What this machine is: enough to tell two runs' hardware apart."""
    from .checks import torch_version_attr

    try:
        affinity = sorted(os.sched_getaffinity(0))
    except AttributeError:
        affinity = list(range(os.cpu_count() or 1))
    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cores_available": len(affinity),
        "cores": format_cores(affinity),
        "memory_gib": _memory_gib(),
        "gpus": gpu_info(),
        "nvidia_driver": _nvidia_driver(),
        "cuda": torch_version_attr("cuda"),  # the CUDA torch was built for
        "libraries": library_versions(),
    }
