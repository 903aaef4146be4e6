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
