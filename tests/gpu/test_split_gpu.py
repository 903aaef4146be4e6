"""The split model with its tail on the GPU: the CPU head and the CUDA tail give the unsplit
model's output, in one process (SplitRunner) and as a pair (TailWorker behind a LocalLink)."""

from __future__ import annotations

import threading

import pytest
import torch

from rayprof.model import build_model
from rayprof.pair import LocalLink, SplitRunner, TailWorker, build_halves
from rayprof.source import SourceSettings
from rayprof.worker import StreamWorker
from tests.unit.fakes import make_plan

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def plan(**over):
    base = dict(source=SourceSettings(uri="synthetic", width=128, height=96, fps=0.0), model="resnet50",
                prep_size=128, cores=(), cores_spec="auto", max_steps=8, warmup_steps=2, batch_size=4,
                split_point="layer3", pair_id="p", exec_device="cuda", head_device="cpu")
    base.update(over)
    return make_plan(**base)


def test_in_process_split_moves_the_activation_to_the_gpu_and_matches_the_whole_model():
    runner = SplitRunner(plan(role="split"), clock=lambda: 0.0)
    assert runner.head.device.type == "cpu" and runner.tail.device.type == "cuda"
    x = torch.randn(2, 3, 128, 128)
    runner.step(x)
    runner.synchronize()
    with torch.no_grad():
        expected = build_model("resnet50")(x)
    assert torch.allclose(runner.tail.last_output.float().cpu(), expected, atol=1e-3, rtol=1e-3)


def test_pair_with_a_cuda_tail_records_the_copy_as_transfer():
    rows = {"head": [], "tail": []}
    tail = TailWorker(plan(role="tail", actor_id="t"), lambda b: rows["tail"].extend(b.to_pylist()), pin=False)
    head = StreamWorker(plan(role="head", actor_id="h", exec_device="cpu"),
                        lambda b: rows["head"].extend(b.to_pylist()), pin=False, link=LocalLink(tail))
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("tail", tail.run()))
    t.start()
    assert head.run().status == "completed"
    t.join(120)
    assert out["tail"].status == "completed", out["tail"].error
    assert [r["step"] for r in rows["tail"]] == list(range(8))
    assert all(r["exec_device"].startswith("cuda") and r["gpu_name"] and r["transfer_ms"] > 0 for r in rows["tail"])
    head_half, _ = build_halves(plan(role="head"))
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        got = tail.runner.module(head_half(x).cuda()).cpu()
        assert torch.allclose(got, build_model("resnet50")(x), atol=1e-3, rtol=1e-3)
