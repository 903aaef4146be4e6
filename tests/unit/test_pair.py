"""The split pair in one process, no Ray: a head StreamWorker and a TailWorker joined by a
LocalLink (a thread), and the in-process SplitRunner. Real models (random weights), small frames."""

from __future__ import annotations

import threading

import pyarrow as pa
import pytest
import torch

from rayprof.errors import UserError
from rayprof.model import build_model
from rayprof.pair import LocalLink, SplitRunner, TailWorker, build_halves
from rayprof.source import SourceSettings
from rayprof.worker import StreamWorker
from tests.unit.fakes import make_plan


def plan(**over):
    base = dict(source=SourceSettings(uri="synthetic", width=64, height=48, fps=0.0), model="resnet18",
                prep_size=64, cores=(), cores_spec="auto", max_steps=6, warmup_steps=1, batch_size=2,
                split_point="layer2", pair_id="w-0", window=2)
    base.update(over)
    return make_plan(**base)


class Sink:
    def __init__(self):
        self.batches: list[pa.RecordBatch] = []

    def __call__(self, batch):
        self.batches.append(batch)

    def rows(self) -> list[dict]:
        return pa.Table.from_batches(self.batches).to_pylist() if self.batches else []


def run_pair(head_over=None, tail_over=None, tail_factory=None):
    """Run a head and its tail to the end; returns (head result, tail result, head rows, tail rows, tail)."""
    head_sink, tail_sink = Sink(), Sink()
    tail_kw = {"runner_factory": tail_factory} if tail_factory else {}
    tail = TailWorker(plan(actor_id="w-0-tail", role="tail", peer="w-0-head", **(tail_over or {})), tail_sink,
                      pin=False, **tail_kw)
    head = StreamWorker(plan(actor_id="w-0-head", role="head", peer="w-0-tail", **(head_over or {})), head_sink,
                        pin=False, link=LocalLink(tail))
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("tail", tail.run()))
    t.start()
    head_result = head.run()
    t.join(60)
    assert not t.is_alive()
    return head_result, out["tail"], head_sink.rows(), tail_sink.rows(), tail


def test_pair_rows_share_pair_and_step_and_split_the_stages():
    head_result, tail_result, head_rows, tail_rows, _ = run_pair()
    assert (head_result.status, tail_result.status) == ("completed", "completed"), (head_result.error, tail_result.error)
    assert [r["step"] for r in head_rows] == [r["step"] for r in tail_rows] == list(range(6))
    assert {r["pair_id"] for r in head_rows + tail_rows} == {"w-0"}
    assert {r["role"] for r in head_rows} == {"head"} and {r["role"] for r in tail_rows} == {"tail"}
    for h, t in zip(head_rows, tail_rows):
        assert h["read_ms"] > 0 and h["prep_ms"] > 0 and h["exec_ms"] > 0
        assert h["transfer_ms"] is not None and h["wait_ms"] is not None
        assert t["read_ms"] is None and t["prep_ms"] is None
        assert t["exec_ms"] > 0 and t["transfer_ms"] is not None and t["wait_ms"] is not None
        assert t["total_ms"] == pytest.approx(t["wait_ms"] + t["transfer_ms"] + t["exec_ms"], rel=1e-6)
        assert h["total_ms"] == pytest.approx(h["read_ms"] + h["prep_ms"] + h["exec_ms"] + h["wait_ms"] + h["transfer_ms"],
                                              rel=1e-6)
        assert t["frames"] == h["frames"] == 2 and t["warmup"] == h["warmup"]
        # end to end (head start → tail end) covers the head's work and the tail's compute
        e2e_ms = (t["t_start"] - h["t_start"]).total_seconds() * 1e3 + t["total_ms"]
        assert e2e_ms >= h["read_ms"] + h["prep_ms"] + h["exec_ms"] + t["exec_ms"]
        assert t["frame_age_ms"] >= h["frame_age_ms"]


def test_the_tail_holds_the_weights_the_head_cut_and_gives_the_unsplit_output():
    _, tail_result, _, _, tail = run_pair()
    assert tail_result.status == "completed"
    full = build_model("resnet18")  # the seed is the same: the model the head built
    head, _ = build_halves(plan(role="head"))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(tail.runner.module(head(x)), full(x), atol=1e-5)
    fc = dict(tail.runner.module.named_parameters())["fc.weight"]
    assert torch.equal(fc, full.fc.weight)


def test_retrain_pair_trains_only_the_tail_and_records_loss_there():
    head_result, tail_result, head_rows, tail_rows, tail = run_pair(
        head_over={"mode": "retrain", "num_classes": 3}, tail_over={"mode": "retrain", "num_classes": 3})
    assert (head_result.status, tail_result.status) == ("completed", "completed"), (head_result.error, tail_result.error)
    assert all(r["loss"] is None for r in head_rows)
    assert all(r["loss"] is not None and r["loss"] > 0 for r in tail_rows)
    trainable = [n for n, p in tail.runner.module.named_parameters() if p.requires_grad]
    assert trainable == ["fc.weight", "fc.bias"]
    assert tail.runner.num_classes == 3


def test_a_failing_tail_fails_its_head_with_the_tails_error():
    class Broken:  # the real tail half, failing at step 2
        def __init__(self, inner):
            self.inner = inner
            self.device, self.info, self.synchronize = inner.device, inner.info, inner.synchronize

        def step(self, x, labels=None, step=0):
            if step == 2:
                raise RuntimeError("tail exploded")
            return self.inner.step(x, labels, step=step)

    head_sink, tail_sink = Sink(), Sink()
    tail = TailWorker(plan(actor_id="w-0-tail", role="tail"), tail_sink, pin=False,
                      runner_factory=lambda p: Broken(tail._build_runner(p)))
    head = StreamWorker(plan(actor_id="w-0-head", role="head", max_steps=0), head_sink, pin=False,
                        link=LocalLink(tail))
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("tail", tail.run()))
    t.start()
    head_result = head.run()  # max_steps 0 on a synthetic source: only the tail's failure can end it
    t.join(60)
    assert out["tail"].status == "failed" and "tail exploded" in out["tail"].error
    assert head_result.status == "failed" and "tail exploded" in head_result.error
    assert [r["step"] for r in tail_sink.rows()] == [0, 1]


def test_stopping_the_tail_releases_a_blocked_head():
    head_sink, tail_sink = Sink(), Sink()
    tail = TailWorker(plan(actor_id="t", role="tail"), tail_sink, pin=False)
    head = StreamWorker(plan(actor_id="h", role="head", max_steps=0), head_sink, pin=False, link=LocalLink(tail))
    out = {}
    threads = [threading.Thread(target=lambda: out.setdefault("tail", tail.run())),
               threading.Thread(target=lambda: out.setdefault("head", head.run()))]
    for t in threads:
        t.start()
    while tail.progress()["steps"] < 3:
        threading.Event().wait(0.05)
    tail.stop()
    head.stop()
    for t in threads:
        t.join(60)
    assert out["tail"].status == "stopped" and out["head"].status == "stopped"
    assert out["tail"].steps >= 3 and out["head"].steps >= out["tail"].steps


def test_in_process_split_records_the_move_as_its_own_stage():
    sink = Sink()
    w = StreamWorker(plan(role="split", pair_id=None), sink, pin=False)
    result = w.run()
    assert result.status == "completed", result.error
    rows = sink.rows()
    assert len(rows) == 6 and {r["role"] for r in rows} == {"split"}
    for r in rows:
        assert r["transfer_ms"] > 0 and r["exec_ms"] > 0 and r["wait_ms"] is None
        assert r["total_ms"] == pytest.approx(r["read_ms"] + r["prep_ms"] + r["exec_ms"] + r["transfer_ms"], rel=1e-6)


def test_in_process_split_retrain_runs_the_tail_on_the_copied_activation():
    # cut at bn1: the tail starts with an in-place ReLU on the activation the frozen head made
    runner = SplitRunner(plan(role="split", split_point="bn1", mode="retrain", num_classes=4), clock=lambda: 0.0)
    loss = runner.step(torch.randn(2, 3, 64, 64), torch.tensor([0, 3]))
    assert loss > 0 and runner.tail.num_classes == 4


def test_retrain_cut_after_the_classifier_is_a_user_error():
    with pytest.raises(UserError) as e:
        build_halves(plan(model="squeezenet1_0", split_point="classifier.1", mode="retrain", num_classes=3))
    assert "classifier" in e.value.message and "in the head half" in e.value.message


def test_a_stopped_tail_that_never_got_its_half_ends_cleanly():
    tail = TailWorker(plan(role="tail"), Sink(), pin=False)
    tail.end(None)  # the head ended (failed) before it could send the tail half
    result = tail.run()
    assert result.status == "stopped" and result.steps == 0
