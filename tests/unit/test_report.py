"""The report: plot data with known answers (no drawing), the figures, the page, the errors, the command."""

import base64
import re
import struct

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from rayprof import report
from rayprof.cli import main
from rayprof.errors import UserError
from rayprof.metrics import RowBuffer, StepRecord, summarize
from rayprof.sink import DatasetWriter, write_manifest

T0 = 1_767_225_600 * 10**9  # 2026-01-01T00:00:00Z
MS = 10**6
NODE_1, NODE_2 = ("10.0.0.1", "a1" * 28), ("10.0.0.2", "b2" * 28)


def ident(worker, replica=0, *, node=NODE_1, role="full", pair_id=None, sweep_point=None, batch_size=4):
    return dict(replica=replica, actor_id=f"{worker}-{replica}" + (f"-{role}" if role in ("head", "tail") else "")
                + (f"-{re.sub('[=,]', '-', sweep_point)}" if sweep_point else ""), pair_id=pair_id,
                node_ip=node[0], node_id=node[1], model="resnet18", mode="inference", role=role,
                batch_size=batch_size, sweep_point=sweep_point)


def full(worker, replica=0, *, steps=40, warmup=2, step_ms=10.0, start_ns=T0, spikes=(), **kw):
    """Back-to-back steps of exactly ``step_ms`` (read 1, prep 2, exec the rest), warm-up steps
    5× slower and ``spikes`` steps 10× slower."""
    buf = RowBuffer(ident(worker, replica, **kw))
    t = start_ns
    for i in range(steps):
        total = step_ms * (5 if i < warmup else 10 if i in spikes else 1)
        buf.append(StepRecord(step=i, warmup=i < warmup, t_start_ns=t, read_ms=1.0, prep_ms=2.0,
                              exec_ms=total - 3.0, transfer_ms=None, total_ms=total, frames=buf.identity["batch_size"]))
        t += int(total * MS)
    return buf.identity["actor_id"], worker, buf.to_batch()


def pair(worker, *, steps=30, warmup=2, start_ns=T0, sweep_point=None, node=NODE_1):
    """A split pair, one batch every 10 ms: the head reads 1, preps 1, runs 4, puts 1 (7 ms); the
    tail starts waiting as the head hands off and fetches 1, runs 2: 10 ms end to end."""
    pid = f"{worker}-0" + (f"-{sweep_point}" if sweep_point else "")
    head = RowBuffer(ident(worker, role="head", pair_id=pid, sweep_point=sweep_point, node=node))
    tail = RowBuffer(ident(worker, role="tail", pair_id=pid, sweep_point=sweep_point, node=NODE_2))
    for i in range(steps):
        t = start_ns + i * 10 * MS
        head.append(StepRecord(step=i, warmup=i < warmup, t_start_ns=t, read_ms=1.0, prep_ms=1.0, exec_ms=4.0,
                               transfer_ms=1.0, total_ms=7.0, frames=4, wait_ms=0.0))
        tail.append(StepRecord(step=i, warmup=i < warmup, t_start_ns=t + 7 * MS, read_ms=None, prep_ms=None,
                               exec_ms=2.0, transfer_ms=1.0, total_ms=3.0, frames=4, wait_ms=0.0))
    return [(head.identity["actor_id"], worker, head.to_batch()), (tail.identity["actor_id"], worker, tail.to_batch())]


def write_run(root, run_id, actors, *, status="completed", manifest=True):
    writer = DatasetWriter(root, run_id)
    for actor_id, worker, batch in actors:
        writer.write(worker, actor_id, batch)
    if manifest:
        started = min(b.column("t_start")[0].value for _, _, b in actors) / 1e9 if actors else T0 / 1e9
        write_manifest(root, run_id, {
            "run_id": run_id, "run_name": run_id.split("-")[0], "status": status, "duration_s": 12.5,
            "started_at": pd.Timestamp(started, unit="s", tz="UTC").isoformat(), "launcher": "ray",
            "nodes": {NODE_1[1]: {"ip": NODE_1[0], "hostname": "h1", "cpu_model": "EPYC", "cores_available": 8,
                                  "memory_gib": 31.0, "gpus": [{"name": "NVIDIA H100"}]}},
            "actors": {aid: {"plan": {"worker": w}, "status": status} for aid, w, _ in actors}})
    return run_id


def rows_of(actors):
    return pd.concat([b.to_pandas().assign(worker=w) for _, w, b in actors], ignore_index=True)


def fleet():
    """``beta`` (listed first in the spec): two replicas on two nodes, one 10 ms and one 20 ms a
    step; ``alpha``: 5 ms a step, one spike; ``cut``: a split pair."""
    return [full("beta", 0), full("beta", 1, node=NODE_2, step_ms=20.0), full("alpha", step_ms=5.0, spikes=(20,)),
            *pair("cut")]


def sweep(key, values, fps_factor):
    """One worker swept over ``key``: point k runs 40 steps, 4 frames per step, ``fps_factor[k]``
    batches per 10 ms, starting an hour after the previous point."""
    out = []
    for k, (v, f) in enumerate(zip(values, fps_factor)):
        out.append(full("w", steps=40, step_ms=10.0 / f, start_ns=T0 + k * 3600 * 10**9, sweep_point=f"{key}={v}"))
    return out


@pytest.fixture(scope="module")
def b():
    return report.batch_rows(rows_of(fleet()), ["beta", "cut", "alpha"])


# --------------------------------------------------------------------------- plot data


def test_batch_rows_one_row_per_batch_units_in_spec_order_and_node_names(b):
    assert len(b) == 40 + 40 + 40 + 30  # the pair's head and tail rows joined: 30 batches
    assert list(b["unit"].cat.categories) == ["beta", "cut", "alpha"]
    assert list(b["node"].cat.categories) == ["10.0.0.1", "10.0.0.2"]
    assert b.loc[b["unit"] == "cut", "split"].all() and not b.loc[b["unit"] != "cut", "split"].any()
    assert b["series"].nunique() == 4  # one per actor (a pair's batches are its head's)
    assert (b["sweep_point"] == "-").all() and not report.is_sweep(b)


def test_batch_rows_names_workers_naturally_without_a_spec_order():
    b = report.batch_rows(rows_of([full(f"w{i}", steps=4) for i in (10, 2, 1)]))
    assert list(b["unit"].cat.categories) == ["w1", "w2", "w10"]


def test_summary_known_answers(b):
    s = report.summary(b[~b["warmup"]], {"beta": "completed", "alpha": "failed"})
    beta = s[s["worker"] == "beta"].set_index("stage")
    assert list(beta.index) == ["read", "prep", "exec", "total"]
    # 38 measured steps per replica, in parallel, after 2 warm-up steps of 5×: replica 0 runs
    # 0.10-0.48 s (10 ms a step), replica 1 0.20-0.96 s (20 ms): 304 frames over 0.86 s
    assert beta.loc["total", "steps"] == 76 and beta.loc["total", "frames"] == 304
    assert beta.loc["total", "fps"] == pytest.approx(304 / 0.86)
    assert beta.loc["total", "p50"] == pytest.approx(15.0) and beta.loc["read", "mean"] == pytest.approx(1.0)
    assert beta.loc["total", "nodes"] == "10.0.0.1, 10.0.0.2" and beta.loc["total", "status"] == "completed"
    cut = s[s["worker"] == "cut"].set_index("stage")
    assert {"exec (head)", "transfer", "queue", "exec (tail)", "e2e"} <= set(cut.index)
    assert cut.loc["e2e", "mean"] == pytest.approx(10.0) and cut.loc["transfer", "mean"] == pytest.approx(2.0)
    assert cut.loc["e2e", "status"] == "-"  # not in the manifest
    assert s[s["worker"] == "alpha"]["status"].iloc[0] == "failed"


def test_stage_breakdown_adds_up_to_the_batch(b):
    bd = report.stage_breakdown(b[~b["warmup"]])
    assert list(bd.index) == ["beta", "cut", "alpha"]
    assert list(bd.columns) == ["read", "prep", "exec", "head", "head_wait", "transfer", "queue", "tail", "total"]
    parts = bd.drop(columns="total").sum(axis=1)
    np.testing.assert_allclose(parts, bd["total"])
    assert bd.loc["cut", "head"] == pytest.approx(4.0) and np.isnan(bd.loc["beta", "head"])


def test_timeline_clock_warmup_and_thinning_keep_spikes():
    actors = [full("w", steps=5000, warmup=3, spikes=(4321,))]
    b = report.batch_rows(rows_of(actors))
    whole = report.timeline(b)
    assert len(whole) == 5000 and whole["t_s"].iloc[0] == 0.0
    assert whole["t_s"].iloc[10] == pytest.approx((3 * 50 + 7 * 10) / 1000)  # three 50 ms warm-up steps first
    thin = report.timeline(b, max_points=200)
    assert len(thin) <= 200 + 3 and thin["warmup"].sum() == 3
    assert thin["total_ms"].max() == pytest.approx(100.0)  # the one 10× step survived
    assert thin["t_s"].is_monotonic_increasing


def test_point_clock_cuts_the_pauses_between_sweep_points():
    b = report.batch_rows(rows_of(sweep("batch_size", [4, 8], [1, 1])))
    clock = report.point_clock(b)
    assert list(clock.index) == ["batch_size=4", "batch_size=8"]
    # each point is 2 warm-up steps of 50 ms + 38 of 10 ms = 0.48 s; the gap is 2 % of both
    assert clock["offset"].tolist() == pytest.approx([0.0, 0.48 + 0.02 * 0.96])
    t = report.timeline(b)
    assert t["t_s"].max() < 1.0  # not an hour


def test_latency_cdf_exact_for_few_steps_and_quantiles_for_many():
    b = report.batch_rows(rows_of([full("few", steps=5, warmup=0), full("many", steps=2000, warmup=0, spikes=(7,))]))
    cdf = report.latency_cdf(b, points=100)
    ms, frac = cdf["few"]
    assert ms.tolist() == [10.0] * 6 and frac.tolist() == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ms, frac = cdf["many"]
    assert len(ms) == 100 and frac[0] == 0.0 and frac[-1] == 1.0 and ms[-1] == 100.0 and ms[0] == 10.0


def test_node_throughput_rows_add_up_to_each_node(b):
    measured = b[~b["warmup"]]
    nt = report.node_throughput(measured)
    per_node = summarize(measured.assign(node=measured["node"].astype(str)), by=["node"], include_warmup=True)
    np.testing.assert_allclose(nt.sum(axis=1).to_numpy(), per_node.set_index("node").loc[nt.index, "fps"])
    assert list(nt.columns) == ["beta", "cut", "alpha"]
    assert nt.loc["10.0.0.2", "alpha"] == 0.0


def test_parse_point():
    assert report.parse_point("batch_size=8,replicas=2") == {"batch_size": "8", "replicas": "2"}
    assert report.parse_point("split=layer2/layer3") == {"split": "layer2/layer3"}


def test_sweep_table_scaling_efficiency_against_the_smallest_point():
    b = report.batch_rows(rows_of(sweep("replicas", [1, 2, 4], [1.0, 1.8, 3.2])))
    assert report.is_sweep(b)
    key, t = report.sweep_table(b[~b["warmup"]])
    assert key == "replicas" and t["x"].tolist() == [1, 2, 4] and t["series"].unique().tolist() == ["w"]
    assert t["efficiency"].tolist() == pytest.approx([1.0, 0.9, 0.8], rel=1e-3)
    assert t["fps"].iloc[0] == pytest.approx(400.0, rel=1e-3) and t["p99"].iloc[0] == pytest.approx(10.0)


def test_sweep_table_of_a_grid_and_of_split_points():
    grid = [full("w", steps=10, start_ns=T0 + k * 10**9, sweep_point=f"batch_size={bs},replicas={r}")
            for k, (bs, r) in enumerate([(4, 1), (8, 1), (4, 2), (8, 2)])]
    key, t = report.sweep_table(report.batch_rows(rows_of(grid)))
    assert key == "batch_size" and t["series"].tolist() == ["w · replicas=1"] * 2 + ["w · replicas=2"] * 2
    assert t["efficiency"].isna().all()  # batch size is not hardware
    split = [*pair("cut", sweep_point="split=layer2"), *pair("cut", sweep_point="split=layer3", start_ns=T0 + 10**10)]
    key, t = report.sweep_table(report.batch_rows(rows_of(split)))
    assert key == "split" and t["x"].tolist() == ["layer2", "layer3"]


def test_worker_statuses_worst_actor_wins():
    manifest = {"actors": {"a-0": {"plan": {"worker": "a"}, "status": "completed"},
                           "a-1": {"plan": {"worker": "a"}, "status": "failed"},
                           "b-0": {"plan": {"worker": "b"}, "status": "stopped"}}}
    assert report.worker_statuses(manifest) == {"a": "failed", "b": "stopped"}
    assert report.worker_statuses({}) == {}


# --------------------------------------------------------------------------- figures


def test_figures_label_their_axes_for_one_worker_and_for_twelve():
    one = report.batch_rows(rows_of([full("solo", steps=8)]))
    many = report.batch_rows(rows_of([full(f"w{i}", i % 4, node=(NODE_1, NODE_2)[i % 2], steps=8) for i in range(12)]))
    for b, n in ((one, 1), (many, 12)):
        figs = report.figures(b, b[~b["warmup"]])
        assert set(figs) == {"stages", "timeline", "cdf", "nodes"}
        assert len(figs["timeline"].axes) == n
        assert figs["stages"].axes[0].get_xlabel() == "mean time per batch (ms)"
        assert figs["timeline"].axes[-1].get_xlabel() == "seconds since the run's first step"
        assert figs["timeline"].get_supylabel() == figs["cdf"].axes[0].get_xlabel() == report.LATENCY
        assert figs["cdf"].axes[0].get_ylabel() == "fraction of batches at or below"
        assert figs["nodes"].axes[0].get_xlabel().startswith("throughput (frames/s")
        assert all(fig.legends for fig in figs.values()), "every plot has a legend"
        assert [t.get_text() for t in figs["stages"].axes[0].get_yticklabels()] == list(b["unit"].cat.categories)


def test_sweep_figures_show_efficiency_only_for_hardware_keys():
    b = report.batch_rows(rows_of(sweep("nodes", [1, 2], [1.0, 2.0])))
    figs = report.figures(b, b[~b["warmup"]])
    assert [ax.get_ylabel() for ax in figs["sweep"].axes] == [
        "throughput (frames/s)", "p99 total / e2e latency (ms)", "scaling efficiency (1 = linear)"]
    assert figs["latency-throughput"].axes[0].get_xlabel() == "throughput (frames/s)"
    b = report.batch_rows(rows_of(sweep("batch_size", [4, 8], [1.0, 1.5])))
    figs = report.figures(b, b)
    assert len(figs["sweep"].axes) == 2


# --------------------------------------------------------------------------- the page


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_write_report_writes_a_self_contained_page_and_the_pngs_beside_it(tmp_path):
    root, out = tmp_path / "runs", tmp_path / "out"
    out.mkdir()
    run = write_run(root, "fleet-20260101-000000-aaaa", fleet())
    before = sorted(p for p in root.rglob("*"))
    paths = report.write_report(root, "latest", out / "r.html")
    assert [p.name for p in paths] == ["r.html", "r-stages.png", "r-timeline.png", "r-cdf.png", "r-nodes.png"]
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in paths)  # nothing else, nowhere else
    assert sorted(p for p in root.rglob("*")) == before
    page = paths[0].read_text()
    embedded = re.findall(r"src='data:image/png;base64,([^']+)'", page)
    assert [base64.b64decode(e) for e in embedded] == [p.read_bytes() for p in paths[1:]]
    assert all(png_size(p.read_bytes())[0] >= 800 for p in paths[1:])
    assert not re.search(r"(src|href)=['\"]?(https?:)?//", page) and "<link" not in page and "<script" not in page
    for text in (run, "completed", "12.5 s", "EPYC", "NVIDIA H100", "What the numbers mean", "exec (head)", "e2e",
                 "180 (10 warm-up, left out)"):
        assert text in page


def test_write_report_of_a_sweep_adds_the_sweep_plots(tmp_path):
    write_run(tmp_path, "sweep-20260101-000000-bbbb", sweep("replicas", [1, 2], [1.0, 1.9]))
    paths = report.write_report(tmp_path, "sweep-20260101-000000-bbbb", tmp_path / "s.html", include_warmup=True)
    assert [p.name for p in paths][-2:] == ["s-sweep.png", "s-latency-throughput.png"]
    assert "scaling efficiency" in paths[0].read_text() and "80 (4 warm-up, included)" in paths[0].read_text()


def test_latest_is_the_run_that_started_last_with_or_without_a_manifest(tmp_path):
    write_run(tmp_path, "b-old", [full("w", steps=3)])
    write_run(tmp_path, "a-new", [full("w", steps=3, start_ns=T0 + 10**12)], manifest=False)
    assert report.resolve_run(tmp_path, "latest") == "a-new"
    assert report.resolve_run(tmp_path, "run=b-old") == "b-old"


@pytest.mark.parametrize("setup, run, out, field, words", [
    ("none", "latest", "r.html", "ROOT", "does not exist"),
    ("bare", "latest", "r.html", "ROOT", "holds no rayprof runs"),
    ("runs", "fleet-2026", "r.html", "--run", "use latest or one of: empty-1, fleet-1, warm-1"),
    ("runs", "empty-1", "r.html", "--run", "has no rows yet"),
    ("runs", "warm-1", "r.html", "--run", "only warm-up steps"),
    ("runs", "fleet-1", "r.png", "-o", "is not an .html file name"),
    ("runs", "fleet-1", "missing/r.html", "-o", "does not exist"),
])
def test_user_errors_write_nothing(tmp_path, setup, run, out, field, words):
    root = tmp_path / "runs"
    if setup != "none":
        root.mkdir()
    if setup == "runs":
        write_run(root, "fleet-1", [full("w", steps=3)])
        write_run(root, "warm-1", [full("w", steps=2, warmup=2)])
        write_run(root, "empty-1", [])
    with pytest.raises(UserError) as e:
        report.write_report(root, run, tmp_path / out)
    assert e.value.field == field and words in e.value.message
    assert not list(tmp_path.glob("r.*")) and not list(tmp_path.glob("r-*"))


def test_report_command(tmp_path):
    write_run(tmp_path, "fleet-1", fleet())
    result = CliRunner().invoke(main, ["report", str(tmp_path), "--run", "fleet-1", "-o", str(tmp_path / "x.html")])
    assert result.exit_code == 0, result.output
    assert "x.html (4 plots" in result.output and (tmp_path / "x-cdf.png").exists()
    result = CliRunner().invoke(main, ["report", str(tmp_path), "--run", "nope", "-o", str(tmp_path / "y.html")])
    assert result.exit_code == 2 and "error: --run = 'nope'" in result.output
