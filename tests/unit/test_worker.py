"""The engine with fakes and a fake clock: exact stage accounting, flushing, endings, failures."""

import pyarrow as pa
import pytest

from rayprof.metrics import FILE_SCHEMA
from rayprof.worker import StreamWorker

from .fakes import FakeClock, FakePrep, FakeRunner, FakeSource, make_plan


def build(plan, clock, frames=10, runner=None, age_s=0.0):
    batches: list[pa.RecordBatch] = []
    src = FakeSource(clock, frames, age_s=age_s)
    w = StreamWorker(
        plan, batches.append, clock=clock, wall_clock=clock.wall, pin=False,
        context=lambda: {"node_id": "n1", "node_ip": "10.0.0.1", "hostname": "h1"},
        source_factory=lambda p: src, prep_factory=lambda p: FakePrep(clock),
        runner_factory=lambda p: runner or FakeRunner(clock),
    )
    return w, batches, src


def rows(batches):
    return pa.Table.from_batches(batches, schema=FILE_SCHEMA).to_pylist()


def test_stage_accounting_is_exact():
    clock = FakeClock()
    w, batches, src = build(make_plan(), clock, frames=10, age_s=0.5)
    res = w.run()
    assert (res.status, res.ended_by, res.steps, res.frames) == ("completed", "end_of_stream", 3, 10)
    r = rows(batches)
    assert [x["step"] for x in r] == [0, 1, 2]
    assert [x["frames"] for x in r] == [4, 4, 2]  # the short last batch is recorded as such
    assert [x["warmup"] for x in r] == [True, False, False]
    for x in r:
        assert x["read_ms"] == pytest.approx(2.0)
        assert x["prep_ms"] == pytest.approx(3.0)
        assert x["exec_ms"] == pytest.approx(11.0)  # 10 ms of work + 1 ms waiting for the device
        assert x["total_ms"] == pytest.approx(16.0)
        assert x["transfer_ms"] is None and x["loss"] is None
        # captured 0.5 s before the read returned; the result is ready prep+exec later
        assert x["frame_age_ms"] == pytest.approx(500 + 3 + 11)
        assert (x["node_id"], x["node_ip"], x["hostname"], x["actor_id"], x["role"]) == ("n1", "10.0.0.1", "h1", "w-0", "full")
    # t_start: wall clock at each step start, 16 ms + the final empty read apart
    assert (r[1]["t_start"] - r[0]["t_start"]).total_seconds() == pytest.approx(0.016)
    assert src.closed


def test_max_steps_and_retrain_loss():
    clock = FakeClock()
    w, batches, _ = build(make_plan(max_steps=2, mode="retrain"), clock, frames=100)
    res = w.run()
    assert (res.status, res.ended_by, res.steps) == ("completed", "max_steps", 2)
    assert [x["loss"] for x in rows(batches)] == [0.5, 0.5]


def test_flush_interval_bounds_what_a_death_loses():
    clock = FakeClock()
    # 16 ms per step, flush every 50 ms → a batch every 4 steps
    w, batches, _ = build(make_plan(flush_interval_s=0.05), clock, frames=4 * 20)
    w.run()
    sizes = [b.num_rows for b in batches]
    assert sum(sizes) == 20 and max(sizes) <= 4 and len(sizes) >= 5


def test_failure_keeps_rows_and_reports():
    clock = FakeClock()
    w, batches, src = build(make_plan(), clock, frames=100, runner=FakeRunner(clock, fail_at=3))
    res = w.run()
    assert res.status == "failed" and res.error == "RuntimeError: boom at step 3"
    assert "Traceback" in res.traceback
    assert [x["step"] for x in rows(batches)] == [0, 1, 2]  # every executed step is kept
    assert src.closed


def test_stop_and_progress_from_another_thread():
    """The orchestrator's thread reads progress while run() works, then stops it."""
    import threading

    clock = FakeClock()
    w, batches, _ = build(make_plan(), clock, frames=10**9)
    result = {}
    t = threading.Thread(target=lambda: result.update(res=w.run()))
    t.start()
    seen = []
    for _ in range(20_000):  # bounded: wait for the loop to be well under way
        p = w.progress()
        if p["steps"] >= 50:
            seen.append(p)
            break
        threading.Event().wait(0.001)
    w.stop()
    t.join(timeout=60)
    assert not t.is_alive()
    assert seen and seen[0]["status"] == "running" and seen[0]["frames"] == 4 * seen[0]["steps"]
    res = result["res"]
    assert res.status == "stopped" and res.ended_by == "stop"
    assert res.steps >= 50 and [r["step"] for r in rows(batches)] == list(range(res.steps))


def test_emit_failure_keeps_rows_for_the_next_flush():
    clock = FakeClock()
    sent, calls = [], {"n": 0}

    def flaky(batch):
        calls["n"] += 1
        if calls["n"] == 1:
            raise ConnectionError("sink down")
        sent.append(batch)

    w = StreamWorker(make_plan(flush_interval_s=0.01), flaky, clock=clock, wall_clock=clock.wall, pin=False,
                     source_factory=lambda p: FakeSource(clock, 12), prep_factory=lambda p: FakePrep(clock),
                     runner_factory=lambda p: FakeRunner(clock))
    res = w.run()
    assert res.status == "completed"
    # the batch that failed was delivered with the next one: nothing executed is lost
    assert sum(b.num_rows for b in sent) == res.steps == 3


def test_progress_after_the_run():
    clock = FakeClock()
    w, _, _ = build(make_plan(max_steps=3), clock, frames=100)
    assert w.progress()["status"] == "created"
    w.run()
    p = w.progress()
    assert (p["status"], p["steps"], p["frames"], p["rows_emitted"]) == ("completed", 3, 12, 3)


def test_emitter_redelivers_with_the_same_sequence_number():
    """A write that fails is retried as the same file: no step lost, none twice."""
    from rayprof.worker import Emitter

    files, calls = {}, {"n": 0}

    def write(batch, seq):
        calls["n"] += 1
        if calls["n"] == 2:  # the second delivery fails once
            raise ConnectionError("sink hiccup")
        files[seq] = batch

    clock = FakeClock()
    emitter = Emitter(write)
    w = StreamWorker(make_plan(flush_interval_s=0.03), emitter, clock=clock, wall_clock=clock.wall, pin=False,
                     source_factory=lambda p: FakeSource(clock, 40), prep_factory=lambda p: FakePrep(clock),
                     runner_factory=lambda p: FakeRunner(clock))
    res = w.run()
    steps = [r["step"] for seq in sorted(files) for r in files[seq].to_pylist()]
    assert res.status == "completed" and emitter.resends == 1  # a hiccup is survived…
    assert steps == list(range(res.steps)) and res.steps == 10  # …and every executed step is there, once
    assert emitter.rows == res.rows_emitted == res.steps


def test_a_sink_that_stays_down_fails_the_worker_with_its_rows_queued():
    from rayprof.worker import Emitter

    def write(batch, seq):
        raise ConnectionError("sink gone")

    clock = FakeClock()
    emitter = Emitter(write, max_unsent=2)
    w = StreamWorker(make_plan(flush_interval_s=0.01), emitter, clock=clock, wall_clock=clock.wall, pin=False,
                     source_factory=lambda p: FakeSource(clock, 400), prep_factory=lambda p: FakePrep(clock),
                     runner_factory=lambda p: FakeRunner(clock))
    res = w.run()
    assert res.status == "failed" and "sink gone" in res.error and res.rows_emitted == 0
    assert res.steps == 3  # it stopped once more than two batches were waiting
