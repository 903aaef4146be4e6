"""profile.torch in the engine: a real torch.profiler around StreamWorker with fake parts."""

import gzip
import json

import pytest

from rayprof.markers import torch_profiler_active
from rayprof.profiling import NO_TRACER, TorchTracer
from rayprof.worker import Emitter, StreamWorker

from .fakes import FakeClock, FakePrep, FakeRunner, FakeSource, make_plan


def schedule(wait=1, warmup=1, active=2, repeat=0):
    return dict(wait=wait, warmup=warmup, active=active, repeat=repeat,
                record_shapes=False, profile_memory=False, with_stack=False)


def run_worker(steps, profile_torch, runner=None):
    """StreamWorker over fakes; returns (result, {kind/name: bytes}, worker)."""
    clock = FakeClock()
    files: dict[str, bytes] = {}

    def put_file(kind, name, data):
        files[f"{kind}/{name}"] = data
        return f"/out/{kind}/{name}"

    w = StreamWorker(make_plan(max_steps=steps, profile_torch=profile_torch),
                     Emitter(lambda batch, seq: None, put_file=put_file),
                     clock=clock, wall_clock=clock.wall, pin=False,
                     source_factory=lambda p: FakeSource(clock, 10_000), prep_factory=lambda p: FakePrep(clock),
                     runner_factory=lambda p: runner or FakeRunner(clock))
    return w.run(), files, w


def events(data: bytes) -> list[dict]:
    return json.loads(gzip.decompress(data))["traceEvents"]  # valid gzip, valid JSON


def test_a_trace_holds_the_stage_ranges_of_its_active_steps():
    res, files, _ = run_worker(6, schedule(wait=1, warmup=1, active=2, repeat=1))
    assert res.status == "completed" and res.steps == 6
    assert list(files) == ["torch/w-0.0.pt.trace.json.gz"]
    assert res.artifacts == ["_profiles/torch/w-0.0.pt.trace.json.gz"]
    names = [e.get("name") for e in events(files["torch/w-0.0.pt.trace.json.gz"])]
    for stage in ("step", "read", "prep", "exec"):
        assert names.count(f"rayprof/{stage}") == 2, stage  # the two active steps, nothing else
    assert {"ProfilerStep#2", "ProfilerStep#3"} <= set(names)  # steps 0 (wait) and 1 (warm-up) are left out
    assert "ProfilerStep#1" not in names


@pytest.mark.parametrize("steps, sched, traces", [
    (8, schedule(repeat=0), 2),    # cycles of 4 steps: two complete ones
    (16, schedule(repeat=2), 2),   # repeat caps the cycles
    (11, schedule(repeat=0), 3),   # the run ends in an active phase: that partial cycle is exported
    (10, schedule(repeat=0), 2),   # …but not one that ends in its warm-up
    (3, schedule(wait=5), 0),      # never past the wait
])
def test_the_number_of_traces_follows_the_schedule(steps, sched, traces):
    res, files, _ = run_worker(steps, sched)
    assert res.steps == steps
    assert sorted(files) == [f"torch/w-0.{c}.pt.trace.json.gz" for c in range(traces)]
    assert len(res.artifacts) == traces
    for data in files.values():
        assert any(e.get("name") == "rayprof/exec" for e in events(data))


def test_a_failing_run_still_exports_its_active_cycle_and_stops_the_profiler():
    clock = FakeClock()
    res, files, _ = run_worker(0, schedule(wait=0, warmup=1, active=4), runner=FakeRunner(clock, fail_at=3))
    assert res.status == "failed" and "boom at step 3" in res.error
    assert list(files) == ["torch/w-0.0.pt.trace.json.gz"]  # steps 1-2 recorded, then the error
    assert not torch_profiler_active()


def test_a_trace_that_cannot_be_stored_is_said_and_the_run_goes_on(capsys):
    def store(name, data):
        raise OSError("disk full")

    t = TorchTracer(schedule(wait=0, warmup=1, active=1), "a-0", store)
    t.start()
    t.step()  # warm-up → active
    t.step()  # active → exported
    assert t.stop() == []
    assert "torch trace a-0.0.pt.trace.json.gz not stored: OSError: disk full" in capsys.readouterr().err


def test_without_profile_torch_nothing_is_profiled():
    seen = []

    class Probe(FakeRunner):
        def step(self, x, labels=None, step=0):
            seen.append(torch_profiler_active())
            return super().step(x, labels, step)

    clock = FakeClock()
    res, files, w = run_worker(3, None, runner=Probe(clock))
    assert w._tracer is NO_TRACER and res.artifacts == [] and files == {}
    assert seen == [False, False, False]
