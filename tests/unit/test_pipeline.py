"""``pipeline: overlap``: the prefetch thread reads and preps batch N+1 while the model runs batch N.

No timed assertions: stage accounting is checked with a clock whose time is kept per thread (each
thread's stages advance only its own time, so every number is exact), overlap with events the
fakes wait on, and endings, errors and stops by the rows and steps they leave.
"""

from __future__ import annotations

import threading

import numpy as np
import pyarrow as pa
import pytest
import torch

from rayprof.errors import UserError
from rayprof.metrics import FILE_SCHEMA, SCHEMA_VERSION
from rayprof.plan import plan_fleet
from rayprof.prefetch import AHEAD, HostStaging, Prefetcher
from rayprof.source import SourceSettings
from rayprof.spec import parse_fleet
from rayprof.worker import StreamWorker

from .fakes import FakeClock, FakePrep, FakeRunner, FakeSource, make_plan

TIMEOUT_S = 30  # an event that never comes fails the test; one that comes ends the wait at once


class ThreadClock(FakeClock):
    """A fake clock whose time is kept per thread: a stage advances only the time of the thread
    that runs it (the prefetch thread's reads do not move the model's clock), so each thread's
    stage times are exact however the threads interleave. A new thread starts at the start time."""

    def __init__(self):
        self._local = threading.local()
        super().__init__()

    @property
    def t(self) -> float:
        return getattr(self._local, "t", self.t0)

    @t.setter
    def t(self, value: float) -> None:
        self._local.t = value


class DroppingSource(FakeSource):
    """A live-like source: batch k reports k frames dropped before it."""

    def read(self, n):
        batch = super().read(n)
        if batch is not None:
            batch.dropped = int(batch.indices[0]) // n
        return batch


def build(plan, clock, source, runner=None, prep=None):
    batches: list[pa.RecordBatch] = []
    w = StreamWorker(plan, batches.append, clock=clock, wall_clock=clock.wall, pin=False,
                     context=lambda: {"node_id": "n1", "node_ip": "10.0.0.1", "hostname": "h1"},
                     source_factory=lambda p: source, prep_factory=lambda p: prep or FakePrep(clock),
                     runner_factory=lambda p: runner or FakeRunner(clock))
    return w, batches


def rows(batches):
    return pa.Table.from_batches(batches, schema=FILE_SCHEMA).to_pylist()


def prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "rayprof-prefetch"]


# --------------------------------------------------------------------------- the same steps as serial


@pytest.mark.parametrize("over, frames, ended_by", [
    ({}, 10, "end_of_stream"),  # a short last batch, then the end
    ({"max_steps": 3}, 100, "max_steps"),
    ({"max_steps": 3}, 12, "max_steps"),  # the source ends exactly at max_steps: no read beyond
    ({"mode": "retrain", "max_steps": 4, "warmup_steps": 2}, 100, "max_steps"),
])
def test_overlap_runs_the_same_steps_as_serial(over, frames, ended_by):
    runs = {}
    for pipeline in ("serial", "overlap"):
        clock = ThreadClock()
        src = DroppingSource(clock, frames)
        w, batches = build(make_plan(pipeline=pipeline, **over), clock, src)
        res = w.run()
        keep = ("step", "warmup", "frames", "dropped_frames", "loss", "pipeline", "actor_id", "role")
        runs[pipeline] = (res.status, res.ended_by, res.steps, res.frames, src.next_index, src.closed,
                          [{k: r[k] for k in keep} for r in rows(batches)])
    serial, overlap = runs["serial"], runs["overlap"]
    assert serial[:2] == overlap[:2] == ("completed", ended_by)
    assert serial[2:6] == overlap[2:6]  # steps, frames, frames read from the source (none extra), closed
    for r in serial[6]:
        r["pipeline"] = "overlap"
    assert serial[6] == overlap[6]
    assert {r["pipeline"] for r in overlap[6]} == {"overlap"}


def test_a_file_source_gives_the_model_the_same_inputs_in_the_same_order(tmp_path):
    """The real source and preprocessing (complex: random draws per batch) feed the model the same
    tensors, step for step, in both modes."""
    from tests.support.frames import cfr_video

    video = cfr_video(tmp_path / "v.mp4", seconds=1.0, fps=30.0)

    class Recorder(FakeRunner):
        def step(self, x, labels=None, step=0):
            seen.append((step, tuple(x.shape), float(x.double().sum())))
            return super().step(x, labels, step)

    inputs = {}
    for pipeline in ("serial", "overlap"):
        seen: list = []
        clock = FakeClock()
        plan = make_plan(pipeline=pipeline, prep_level="complex", batch_size=4, source=SourceSettings(uri=str(video)))
        w = StreamWorker(plan, lambda b: None, clock=clock, wall_clock=clock.wall, pin=False,
                         runner_factory=lambda p: Recorder(clock))
        res = w.run()
        assert (res.status, res.ended_by, res.steps, res.frames) == ("completed", "end_of_stream", 8, 30)
        inputs[pipeline] = (seen, res.source_stats)
    assert inputs["serial"] == inputs["overlap"]


# --------------------------------------------------------------------------- what each column means


def test_stage_accounting_in_overlap_is_exact():
    """read and prep are timed on the prefetch thread; the worker's step is its wait plus exec."""
    clock = ThreadClock()
    w, batches = build(make_plan(pipeline="overlap"), clock, FakeSource(clock, 12, age_s=0.5))
    res = w.run()
    assert (res.status, res.ended_by, res.steps) == ("completed", "end_of_stream", 3)
    r = rows(batches)
    for k, x in enumerate(r):
        assert x["read_ms"] == pytest.approx(2.0) and x["prep_ms"] == pytest.approx(3.0)
        assert x["exec_ms"] == pytest.approx(11.0)  # 10 ms of work + 1 ms waiting for the device
        assert x["wait_ms"] == pytest.approx(0.0)  # (the waits move no clock here)
        assert x["total_ms"] == pytest.approx(11.0)  # wait + exec: the worker's wall time per step
        assert x["transfer_ms"] is None and x["pipeline"] == "overlap"
        # captured (0.5 s before) batch k's read ended on the prefetch thread; the result is ready
        # when the worker's exec of step k ends: capture → result, however long it waited ready
        captured_ms = (k + 1) * 2.0 + k * 3.0 - 500.0
        assert x["frame_age_ms"] == pytest.approx((k + 1) * 11.0 - captured_ms)
    # steps tile the worker's time: each starts where the previous ended
    assert (r[1]["t_start"] - r[0]["t_start"]).total_seconds() == pytest.approx(0.011)


def test_serial_rows_say_serial_and_keep_wait_empty():
    clock = FakeClock()
    w, batches = build(make_plan(max_steps=2), clock, FakeSource(clock, 100))
    w.run()
    got = [(x["pipeline"], x["wait_ms"], x["total_ms"]) for x in rows(batches)]
    assert got == [("serial", None, pytest.approx(16.0))] * 2
    assert FILE_SCHEMA.metadata[b"rayprof.schema_version"] == SCHEMA_VERSION.encode() == b"3"


def test_an_in_process_split_keeps_its_transfer_out_of_exec():
    class Split(FakeRunner):
        transfer_ms = 4.0

    clock = ThreadClock()
    w, batches = build(make_plan(pipeline="overlap", role="split", max_steps=2), clock, FakeSource(clock, 100),
                       runner=Split(clock))
    w.run()
    assert [(x["exec_ms"], x["transfer_ms"], x["total_ms"]) for x in rows(batches)] == \
        [(pytest.approx(7.0), 4.0, pytest.approx(11.0))] * 2


# --------------------------------------------------------------------------- it overlaps


def test_the_next_batch_is_read_while_the_model_runs():
    """Step k's model waits until the source is asked for batch k+1: that happens only if reading
    overlaps the model (serial reads batch k+1 after step k ends: the wait would time out)."""
    clock = FakeClock()
    reading = [threading.Event() for _ in range(3)]

    class Source(FakeSource):
        def read(self, n):
            reading[self.next_index // n].set()
            return super().read(n)

    class Runner(FakeRunner):
        def step(self, x, labels=None, step=0):
            if step + 1 < len(reading):
                overlapped.append(reading[step + 1].wait(TIMEOUT_S))
            return super().step(x, labels, step)

    overlapped: list[bool] = []
    w, _ = build(make_plan(pipeline="overlap", max_steps=3), clock, Source(clock, 100), runner=Runner(clock))
    res = w.run()
    assert res.status == "completed" and overlapped == [True, True]


def test_the_prefetcher_stays_one_batch_ahead():
    """After the consumer took 3 batches the thread reads AHEAD more, and no further."""
    clock = FakeClock()
    limit = 4 * (3 + AHEAD)  # frames of the batches it may read
    reached = threading.Event()

    class Source(FakeSource):
        def read(self, n):
            batch = super().read(n)
            if self.next_index >= limit:
                reached.set()
            return batch

    src = Source(clock, 10**6)
    with Prefetcher(src.read, HostStaging(lambda frames: frames, lambda: None), 4, clock) as pre:
        taken = [int(pre.get().batch.indices[0]) for _ in range(3)]
        assert reached.wait(TIMEOUT_S)
    assert taken == [0, 4, 8] and src.next_index == limit and not prefetch_threads()


@pytest.mark.parametrize("frames, limit, sizes", [(5, 0, [4, 1]), (100, 2, [4, 4])])
def test_the_end_stays_the_end(frames, limit, sizes):
    """The source's end, or ``limit`` batches (max_steps): then None, again and again, and not
    one batch read beyond."""
    clock = FakeClock()
    src = FakeSource(clock, frames)
    with Prefetcher(src.read, HostStaging(lambda f: f, lambda: None), 4, clock, limit=limit) as pre:
        assert [pre.get().batch.n for _ in sizes] == sizes
        assert pre.get() is None and pre.get() is None
    assert src.next_index == sum(sizes)


# --------------------------------------------------------------------------- errors and stops


@pytest.mark.parametrize("pipeline", ["serial", "overlap"])
@pytest.mark.parametrize("stage", ["read", "prep"])
def test_an_error_on_the_prefetch_thread_is_the_workers_error(pipeline, stage):
    """Batch 2's read (or prep) fails: steps 0 and 1 ran and are kept, and the error is the
    original one, in both modes."""
    clock = ThreadClock()

    class Source(FakeSource):
        def read(self, n):
            if stage == "read" and self.next_index == 2 * n:
                raise OSError("disk gone")
            return super().read(n)

    class Prep(FakePrep):
        calls = 0

        def __call__(self, frames):
            Prep.calls += 1
            if stage == "prep" and Prep.calls == 3:
                raise ValueError("bad frame")
            return super().__call__(frames)

    src = Source(clock, 100)
    w, batches = build(make_plan(pipeline=pipeline), clock, src, prep=Prep(clock))
    res = w.run()
    assert (res.status, res.ended_by) == ("failed", "error")
    assert res.error == {"read": "OSError: disk gone", "prep": "ValueError: bad frame"}[stage]
    assert f"in {'read' if stage == 'read' else '__call__'}" in res.traceback  # the failing frame is in it
    assert [x["step"] for x in rows(batches)] == [0, 1] and res.steps == 2
    assert src.closed and not prefetch_threads()


def test_a_user_error_while_reading_stays_one_line():
    clock = FakeClock()

    class Source(FakeSource):
        def read(self, n):
            raise UserError("workers[0].source.uri", "rtsp://cam", "stopped answering", "check the camera")

    w, _ = build(make_plan(pipeline="overlap"), clock, Source(clock, 100))
    res = w.run()
    assert res.status == "failed" and res.error.startswith("workers[0].source.uri") and res.traceback is None


def test_a_model_error_joins_the_prefetch_thread():
    clock = ThreadClock()
    src = FakeSource(clock, 100)
    w, batches = build(make_plan(pipeline="overlap"), clock, src, runner=FakeRunner(clock, fail_at=2))
    res = w.run()
    assert res.error == "RuntimeError: boom at step 2" and [x["step"] for x in rows(batches)] == [0, 1]
    assert src.closed and not prefetch_threads()
    assert src.next_index <= 4 * (3 + AHEAD)  # nothing read beyond one batch ahead


def test_stop_mid_run_ends_after_the_step_and_joins_the_thread():
    """stop() during step 2: the step finishes and is recorded, the prefetch thread (which may be
    one batch ahead) is joined before the source closes."""
    clock = ThreadClock()
    src = FakeSource(clock, 10**6)
    worker: list[StreamWorker] = []

    class Runner(FakeRunner):
        def step(self, x, labels=None, step=0):
            if step == 2:
                worker[0].stop()
            return super().step(x, labels, step)

    w, batches = build(make_plan(pipeline="overlap"), clock, src, runner=Runner(clock))
    worker.append(w)
    res = w.run()
    assert (res.status, res.ended_by, res.steps) == ("stopped", "stop", 3)
    assert [x["step"] for x in rows(batches)] == [0, 1, 2]
    assert src.closed and not prefetch_threads()
    assert 3 * 4 <= src.next_index <= 4 * (3 + AHEAD)


def test_stop_while_the_prefetch_thread_is_reading():
    """A live source blocks in read: stop() from another thread ends the run once that read
    returns, and the thread is joined."""
    clock = ThreadClock()
    release, blocked = threading.Event(), threading.Event()

    class Source(FakeSource):
        def read(self, n):
            if self.next_index == 2 * n:  # batch 2 is slow to come
                blocked.set()
                release.wait(TIMEOUT_S)
            return super().read(n)

    src = Source(clock, 10**6)
    w, batches = build(make_plan(pipeline="overlap"), clock, src)
    result = {}
    t = threading.Thread(target=lambda: result.update(res=w.run()))
    t.start()
    assert blocked.wait(TIMEOUT_S)
    w.stop()
    release.set()
    t.join(TIMEOUT_S)
    assert not t.is_alive() and not prefetch_threads()
    res = result["res"]
    assert res.status == "stopped" and res.steps in (2, 3) and src.closed
    assert [x["step"] for x in rows(batches)] == list(range(res.steps))


# --------------------------------------------------------------------------- the spec


def spec(**worker):
    return {"workers": [{"name": "w", "model": "resnet18", "source": "synthetic", **worker}]}


def test_pipeline_in_the_spec_reaches_plans_and_defaults_apply():
    s = parse_fleet({"defaults": {"pipeline": "overlap"},
                     "workers": [{"name": "a", "model": "resnet18", "source": "synthetic", "mode": "retrain"},
                                 {"name": "b", "model": "resnet18", "source": "synthetic", "pipeline": "serial"},
                                 {"name": "c", "model": {"name": "resnet18", "split": "layer2"},
                                  "pair": {"in_process": True}, "source": "synthetic"}]})
    plans = plan_fleet(s, "r-1", cores_available=[0, 1])
    assert [(p.worker, p.role, p.pipeline) for p in plans] == [("a", "full", "overlap"), ("b", "full", "serial"),
                                                               ("c", "split", "overlap")]
    assert parse_fleet(spec()).workers[0].pipeline == "serial"  # the default: the original tool's semantics


@pytest.mark.parametrize("raw, field, value, says", [
    (spec(pipeline="parallel"), "workers[0].pipeline", "parallel", "use one of 'serial' or 'overlap'"),
    ({"defaults": {"pipeline": "overlapped"}, **spec()}, "defaults.pipeline", "overlapped", "did you mean 'overlap'"),
    (spec(pipeline="overlap", model={"name": "resnet18", "split": "layer2"}), "workers[0].pipeline", "overlap",
     "set pair.in_process: true"),
])
def test_pipeline_mistakes_name_the_field_the_value_and_the_fix(raw, field, value, says):
    with pytest.raises(UserError) as e:
        parse_fleet(raw)
    assert (e.value.field, e.value.value) == (field, value) and says in e.value.fix + e.value.problem
    assert "\n" not in str(e.value)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_staging_overlaps_the_copy_and_hands_over_a_ready_input():
    """On a GPU: CPU prep, then the pinned copy on the side stream; the model's stream gets the
    batch only after the event, and the values are the CPU prep's."""
    from rayprof.prefetch import CudaStaging, staging_for

    device = torch.device("cuda", torch.cuda.current_device())
    prep = lambda frames: torch.from_numpy(frames).float()  # noqa: E731
    staging = staging_for(prep, "cpu", "cuda", lambda: None, overlap=True)
    assert isinstance(staging, CudaStaging) and isinstance(staging_for(prep, "cpu", "cuda", lambda: None, False),
                                                           HostStaging)
    clock = FakeClock()
    src = FakeSource(clock, 12)
    with Prefetcher(src.read, staging, 4, clock) as pre:
        got = [pre.get() for _ in range(3)]
    for staged in got:
        assert staged.x.device == device and staged.x.shape == (4, 4, 4, 3)
        assert torch.equal(staged.x.cpu(), torch.from_numpy(staged.batch.frames).float())
        assert staged.ready.query()  # prep_ms ended when the copy had finished
    assert np.isfinite([s.prep_ms for s in got]).all()
