"""The GPU set's code paths, on the CPU (``--device cpu --quick``): the machines CI runs on have no
GPU, and this keeps ``make bench-gpu`` from breaking unseen until one is lent. Numbers are not
checked (a smoke check is not a measurement); the cases, the table and the page are."""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "gpu_set.py"
RESULTS = REPO / "benchmarks" / "RESULTS.md"


def gpu_set(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)


def test_every_case_of_the_gpu_set_runs_on_the_cpu():
    before = hashlib.sha256(RESULTS.read_bytes()).hexdigest()
    res = gpu_set("--device", "cpu", "--quick")
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    rows = [line for line in res.stdout.splitlines() if line.startswith("| ") and "**" in line]
    assert len(rows) == 6, res.stdout  # prep CPU/GPU, AMP, compile, the split tail, overlap
    assert any(r.startswith("| split: head to layer1 on CPU") for r in rows)
    assert any("pipeline overlap" in r for r in rows)
    for line in ("AMP vs FP32", "torch.compile vs eager", "pipeline overlap vs serial"):
        assert line in res.stdout
    assert hashlib.sha256(RESULTS.read_bytes()).hexdigest() == before  # a smoke check writes no numbers


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: the set would run for real")
def test_without_a_gpu_the_gpu_set_says_so_and_exits_0():
    res = gpu_set("--no-write")
    assert res.returncode == 0 and "CUDA" in res.stdout + res.stderr, res.stdout + res.stderr
