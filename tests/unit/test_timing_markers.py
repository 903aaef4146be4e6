"""Stage timing with a fake clock, CUDA-correct sync ordering, and the profiler ranges."""

import torch

from rayprof.markers import mark
from rayprof.timing import StageTimer, cuda_sync_for, no_sync


def test_stage_timer_with_fake_clock():
    t = [0.0]
    timer = StageTimer(lambda: t[0])
    timer.start()
    t[0] += 0.004
    timer.lap("read")
    t[0] += 0.010

    def sync():  # the device finishes its queued work before the clock is read
        t[0] += 0.005

    timer.lap("exec", sync)
    assert timer.ms["read"] == 4.0
    assert abs(timer.ms["exec"] - 15.0) < 1e-9
    assert abs(timer.total_ms() - 19.0) < 1e-9


def test_cuda_sync_is_a_noop_on_cpu():
    assert cuda_sync_for("cpu") is no_sync
    assert cuda_sync_for(torch.device("cpu")) is no_sync


def test_marks_appear_in_a_torch_profiler_trace(tmp_path):
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for step in range(2):
            with mark("step", step):
                with mark("read", step):
                    pass
                with mark("exec", step):
                    torch.ones(4) @ torch.ones(4)
    names = {e.key for e in prof.key_averages()}
    assert {"rayprof/step", "rayprof/read", "rayprof/exec"} <= names
    trace = tmp_path / "trace.json"
    prof.export_chrome_trace(str(trace))
    assert '"rayprof/exec"' in trace.read_text()


def test_marks_outside_a_profiler_are_transparent():
    with mark("read", 3):
        x = 1
    assert x == 1
    try:
        with mark("exec", 4):
            raise ValueError("inner")
    except ValueError as e:
        assert str(e) == "inner"


def test_engine_and_retrain_ranges_in_a_profiler_trace():
    """A real retrain step inside the engine: step/read/prep/exec and forward/backward/optimizer."""
    from torch.profiler import ProfilerActivity, profile

    from rayprof.model import ModelRunner
    from rayprof.prep import Preprocessor
    from rayprof.worker import StreamWorker

    from .fakes import FakeClock, FakeSource, make_plan

    clock = FakeClock()
    plan = make_plan(mode="retrain", model="mobilenet_v3_small", num_classes=3, max_steps=2, batch_size=2)
    w = StreamWorker(plan, lambda b: None, pin=False, source_factory=lambda p: FakeSource(clock, 100),
                     prep_factory=lambda p: Preprocessor("simple", "cpu", size=32),
                     runner_factory=lambda p: ModelRunner(p.model, mode="retrain", num_classes=3))
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        res = w.run()
    assert res.steps == 2
    names = {e.key for e in prof.key_averages()}
    for stage in ("step", "read", "prep", "exec", "forward", "backward", "optimizer"):
        assert f"rayprof/{stage}" in names, stage


def test_an_unobserved_mark_makes_nothing_and_an_observed_one_opens_a_range(monkeypatch):
    """Nothing attached: every mark is one shared do-nothing object. A torch profiler recording or
    an NVTX tool attached: each mark is its own range, pushed with its step and popped."""
    from torch.profiler import ProfilerActivity, profile

    from rayprof import markers

    monkeypatch.setattr(markers, "NVTX_ATTACHED", False)
    assert mark("read", 1) is mark("exec", 2)
    with profile(activities=[ProfilerActivity.CPU]):
        assert mark("read", 1) is not mark("exec", 2)

    calls = []
    monkeypatch.setattr(markers, "NVTX_ATTACHED", True)
    monkeypatch.setattr(markers, "_push", lambda name, step: calls.append(("push", name, step)))
    monkeypatch.setattr(markers, "_pop", lambda: calls.append(("pop",)))
    with mark("step", 7):
        with mark("exec", 7):
            pass
    assert calls == [("push", "step", 7), ("push", "exec", 7), ("pop",), ("pop",)]
