"""The query layer on generated datasets (tests/support/datasets.py): the views against the
pandas reference (``metrics.batches``/``summarize``), stability verdicts, stragglers, runs, a run
still being written, bad input, and the ``runs``/``query`` commands through click's CliRunner."""

import io
import json

import duckdb
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

import rayprof
from rayprof.cli import main
from rayprof.errors import UserError
from rayprof.metrics import BATCH_STAGES, RowBuffer, StepRecord, batches, summarize
from rayprof.query import STAGES, open_dataset
from rayprof.sink import DatasetWriter, read_table
from tests.support import datasets as gen
from tests.support.datasets import BARE, FLEET, LIVE, OLD, SPLIT, SWEEP, full_actor, write_run


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    path = tmp_path_factory.mktemp("dataset")
    gen.fleet_dataset(path)
    return str(path)


@pytest.fixture(scope="module")
def fleet(root):
    return open_dataset(root, FLEET)


def rows_of(root, run_id) -> pd.DataFrame:
    return read_table(root, run_id).to_pandas()


# --------------------------------------------------------------------------- the generator


def test_generated_rows_are_what_a_row_buffer_makes():
    actor = full_actor("w", 1, steps=7, warmup=2, seed=3)
    buf = RowBuffer(actor.identity)
    for i in range(len(actor)):
        c = actor.cols
        nan = lambda v: None if np.isnan(v) else float(v)  # noqa: E731
        buf.append(StepRecord(int(c["step"][i]), bool(c["warmup"][i]), int(c["t_start"][i]), nan(c["read_ms"][i]),
                              nan(c["prep_ms"][i]), nan(c["exec_ms"][i]), nan(c["transfer_ms"][i]),
                              nan(c["total_ms"][i]), int(c["frames"][i]), int(c["dropped_frames"][i]),
                              None, None, nan(c["wait_ms"][i])))
    assert actor.batch(0, len(actor)).equals(buf.to_batch())


# --------------------------------------------------------------------------- the views


def test_steps_holds_every_row_with_partitions_and_added_columns(root):
    ds = open_dataset(root)
    counts = ds.sql("SELECT run_id, worker, count(*) AS n FROM steps GROUP BY ALL").df()
    expected = read_table(root).to_pandas().groupby(["run_id", "worker"]).size()
    assert counts.set_index(["run_id", "worker"])["n"].sort_index().to_dict() == expected.sort_index().to_dict()
    old = open_dataset(root, OLD).sql("SELECT count(*) AS n, count(wait_ms) AS waits FROM steps").df()
    assert old["n"][0] == 120 and old["waits"][0] == 0  # written before wait_ms existed: NULL there


def test_run_still_being_written_skips_the_hidden_part(root):
    live = open_dataset(root, LIVE)  # its folder holds .part-….parquet.tmp, half a file
    assert live.sql("SELECT count(*) FROM steps").fetchall()[0][0] == 100 + 120


def test_node_is_the_ip_or_ip_and_id_where_nodes_share_an_ip(fleet):
    nodes = fleet.sql("SELECT DISTINCT worker, node FROM steps ORDER BY ALL").df()
    assert set(nodes.loc[nodes["worker"] == "sim", "node"]) == {"127.0.0.1 [c3c3c3c3]", "127.0.0.1 [d4d4d4d4]"}
    assert set(nodes.loc[nodes["worker"] == "r18", "node"]) == {"10.0.0.1", "10.0.0.2"}


@pytest.mark.parametrize("run_id", [SPLIT, SWEEP])
def test_batches_joins_pairs_as_metrics_batches_does(root, run_id):
    mine = open_dataset(root, run_id).df("batches")
    ref = batches(rows_of(root, run_id))
    key = ["sweep_point", "worker", "role", "step"]
    mine, ref = (d.sort_values(key).reset_index(drop=True) for d in (mine, ref))
    assert len(mine) == len(ref)
    for col in ["role", "actor_id", "step", "warmup", "frames", "loss"]:
        pd.testing.assert_series_equal(mine[col], ref[col], check_dtype=False, check_names=False)
    for col in ["read_ms", "prep_ms", "exec_ms", "transfer_ms", "wait_ms", "total_ms", "head_ms", "tail_ms",
                "head_wait_ms", "tail_wait_ms", "queue_ms"]:
        np.testing.assert_allclose(mine[col].astype(float), ref[col].astype(float), rtol=1e-9, atol=1e-6, err_msg=col)


def test_pair_batches_take_frames_and_age_from_the_tail_and_leave_out_unfinished_heads(root):
    ds = open_dataset(root, SPLIT)
    pair = ds.sql("SELECT * FROM batches WHERE role = 'pair' ORDER BY step").df()
    tail = ds.sql("SELECT * FROM steps WHERE role = 'tail' ORDER BY step").df()
    assert len(pair) == len(tail) == 190  # the head ran 200 steps; the tail stopped at 190
    np.testing.assert_allclose(pair["frame_age_ms"], tail["frame_age_ms"])
    assert (pair["tail_actor_id"] == "r50s-0-tail").all() and (pair["actor_id"] == "r50s-0-head").all()
    e2e = (tail["t_start"] - pair["t_start"]).dt.total_seconds() * 1e3 + tail["total_ms"]
    np.testing.assert_allclose(pair["total_ms"], e2e, rtol=1e-9)


def test_batches_has_the_pair_columns_without_pairs(fleet):
    cols = fleet.columns("batches")
    assert {"head_ms", "queue_ms", "tail_ms", "tail_node"} <= set(cols)
    assert fleet.sql("SELECT count(head_ms) FROM batches").fetchall()[0][0] == 0


# --------------------------------------------------------------------------- the summary


@pytest.mark.parametrize("run_id", [FLEET, SPLIT, SWEEP])
@pytest.mark.parametrize("reader", ["duckdb", "arrow"])
def test_summary_matches_the_pandas_reference(root, run_id, reader):
    ds = open_dataset(root, run_id, reader=reader)
    by = ds.default_by()
    mine = ds.summary().set_index(by).sort_index()
    ref = summarize(batches(rows_of(root, run_id)), by=by, stages=list(BATCH_STAGES)).set_index(by).sort_index()
    assert list(mine.index) == list(ref.index)
    assert (mine["steps"] == ref["steps"]).all() and (mine["frames"] == ref["frames"]).all()
    np.testing.assert_allclose(mine["fps"], ref["fps"], rtol=1e-6)
    stats = [c for c in ref.columns if c.endswith(("_mean", "_p50", "_p90", "_p95", "_p99", "_p999"))]
    np.testing.assert_allclose(mine[stats].astype(float), ref[stats].astype(float), rtol=1e-9, atol=1e-5,  # ns rounding
                               equal_nan=True)


def test_summary_has_every_stage_column_and_roles(root):
    s = open_dataset(root, SPLIT).summary().set_index("worker")
    assert all(f"{st}_p999" in s.columns for st in STAGES)
    assert s.loc["r50s", "roles"] == "pair" and s.loc["r50x", "roles"] == "split"
    assert np.isnan(s.loc["r50x", "head_mean"]) and not np.isnan(s.loc["r50s", "queue_p99"])


def test_stability_flags_the_drifting_worker_and_keeps_it(fleet):
    s = fleet.summary().set_index("worker")
    assert s.loc["mnv3", "stability"] == "unstable" and s.loc["mnv3", "fps_spread_pct"] > 10
    assert (s.loc[["r18", "r34", "sim"], "stability"] == "stable").all()  # replicas start 0.3 s apart: still stable
    assert (s["window_steps"] == 98).all()  # a third of 295 counted steps


def test_stability_window_and_percentage(fleet):
    short = fleet.summary(window=120).set_index("worker")  # 3 × 120 > 295 steps
    assert (short["stability"] == "short").all() and short["fps_spread_pct"].isna().all()
    loose = fleet.summary(stability_pct=80).set_index("worker")
    assert loose.loc["mnv3", "stability"] == "stable"
    assert (fleet.summary(window=20)["window_steps"] == 20).all()


def test_warmup_is_left_out_unless_asked(fleet):
    counted = fleet.summary().set_index("worker")["steps"]
    every = fleet.summary(include_warmup=True).set_index("worker")["steps"]
    assert (every - counted).to_dict() == {"mnv3": 5, "r18": 20, "r34": 15, "sim": 10}


def test_by_any_column_of_the_steps_view(fleet):
    s = fleet.summary(by=["worker", "node"])
    assert set(s.loc[s["worker"] == "r18", "node"]) == {"10.0.0.1", "10.0.0.2"}
    r18 = s[s["worker"] == "r18"].set_index("node")
    assert r18.loc["10.0.0.2", "exec_p50"] > 1.4 * r18.loc["10.0.0.1", "exec_p50"]
    assert list(fleet.summary(by=["batch_size"])["steps"]) == [3000 - 10 * 5]


def test_default_grouping_adds_runs_and_sweep_points(root):
    assert open_dataset(root, FLEET).default_by() == ["worker"]
    assert open_dataset(root, SWEEP).default_by() == ["sweep_point", "worker"]
    every = open_dataset(root)
    assert every.default_by() == ["run_id", "sweep_point", "worker"]
    assert set(every.summary()["run_id"]) == {FLEET, SPLIT, SWEEP, OLD, BARE, LIVE}


def test_sweep_points_come_in_the_order_they_ran(tmp_path):
    points = ("split=none", "split=layer3", "split=layer2")  # as they ran: not alphabetical
    write_run(tmp_path, "sweep-order", [
        full_actor("w", 0, steps=20, start_ns=gen.T0_NS + i * 60 * 10**9, seed=i, sweep_point=point,
                   actor_id=f"w-p{i}-0") for i, point in enumerate(points)])
    assert list(open_dataset(tmp_path, "sweep-order").summary()["sweep_point"]) == list(points)


# --------------------------------------------------------------------------- stragglers


def test_stragglers_name_the_slow_node_and_the_slow_actor_with_their_stage(fleet):
    found = fleet.stragglers().set_index("name")
    assert list(found.index) == ["10.0.0.2", "r34-2"]  # node B's two r18 actors are named as their node
    node, actor = found.loc["10.0.0.2"], found.loc["r34-2"]
    assert (node["kind"], node["workers"], node["actors"], node["stage"]) == ("node", "r18", 2, "exec")
    assert (actor["kind"], actor["stage"]) == ("actor", "prep") and actor["slower_pct"] > 20
    assert 40 < node["slower_pct"] < 60  # exec 32 ms against 20 ms, of about 25 ms a batch
    assert fleet.stragglers(threshold_pct=60).empty


def test_no_stragglers_without_peers(root):
    assert open_dataset(root, SPLIT).stragglers().empty


# --------------------------------------------------------------------------- runs


def test_runs_lists_every_run_oldest_first(root):
    runs = open_dataset(root).runs().set_index("run_id")
    assert list(runs.index) == [FLEET, SPLIT, SWEEP, OLD, BARE, LIVE]
    fleet = runs.loc[FLEET, ["name", "status", "workers", "nodes", "steps"]].tolist()
    assert fleet == ["fleet", "completed", 4, 4, 3000]
    assert runs.loc[BARE, ["name", "status", "steps"]].tolist() == ["-", "-", 120]  # no manifest: from the rows
    assert runs.loc[BARE, "started"] == pd.Timestamp(gen.T0_NS + 4 * gen.HOUR_NS, unit="ns", tz="UTC")
    assert runs.loc[LIVE, "status"] == "running" and 5 < runs.loc[LIVE, "duration_s"] < 10


def test_latest_is_the_run_started_last(root):
    assert open_dataset(root, "latest").run_ids == [LIVE]
    assert open_dataset(root, f"run={FLEET}").run_ids == [FLEET]
    assert open_dataset(root, "fleet").run_ids == [FLEET]  # the start of one id


def test_a_run_that_has_written_nothing_yet(tmp_path):
    DatasetWriter(tmp_path, "new-20260102-000000-0000")  # the run's folder, no part yet
    ds = open_dataset(str(tmp_path), "latest")
    assert ds.summary().empty and ds.stragglers().empty
    assert ds.runs()[["run_id", "steps"]].values.tolist() == [["new-20260102-000000-0000", 0]]


def test_reopening_sees_parts_written_since(tmp_path):
    actor = full_actor("w", 0, steps=40)
    write_run(tmp_path, "grow-20260102-000000-0000", [actor], rows_per_file=10)
    before = open_dataset(str(tmp_path), "latest")
    DatasetWriter(tmp_path, "grow-20260102-000000-0000").write("w", "w-0", actor.batch(0, 5), seq=99)
    after = open_dataset(str(tmp_path), "latest")
    count = "SELECT count(*) FROM steps"
    assert (before.sql(count).fetchall()[0][0], after.sql(count).fetchall()[0][0]) == (40, 45)


# --------------------------------------------------------------------------- Python API and bad input


def test_python_api_is_exported_lazily(root):
    ds = rayprof.open_dataset(root, FLEET)
    rel = ds.relation("steps")
    assert isinstance(rel, duckdb.DuckDBPyRelation)
    assert rel.filter("worker = 'mnv3'").aggregate("count(*)").fetchall() == [(300,)]
    assert len(ds.df("batches")) == 3000


@pytest.mark.parametrize("call, needles", [
    (lambda r: open_dataset(r, FLEET[:-1] + "b"), ["--run", "did you mean", FLEET]),
    (lambda r: open_dataset(r, "s"), ["--run", "several runs", SPLIT, SWEEP]),
    (lambda r: open_dataset(r, FLEET).summary(by=["wroker"]), ["--by", "did you mean 'worker'", "sweep_point"]),
    (lambda r: open_dataset(r, FLEET).summary(by=[" "]), ["--by", "names no column"]),
    (lambda r: open_dataset(r, FLEET).summary(window=0), ["--window", "1 step or more"]),
    (lambda r: open_dataset(r, FLEET).summary(stability_pct=0), ["--stability-pct"]),
    (lambda r: open_dataset(r, FLEET).stragglers(threshold_pct=-5), ["--straggler-pct"]),
    (lambda r: open_dataset(r, FLEET).sql("SELECT nope FROM steps"), ["--sql", "Binder Error", '"nope"']),
    (lambda r: open_dataset(r, FLEET).relation("rows"), ["view", "steps or batches"]),
    (lambda r: open_dataset(r, reader="fast"), ["reader", "auto, duckdb or arrow"]),
    (lambda r: open_dataset(r + "/missing"), ["ROOT", "does not exist"]),
])
def test_bad_input_is_one_user_error(root, call, needles):
    with pytest.raises(UserError) as e:
        call(root)
    assert "\n" not in e.value.message
    for n in needles:
        assert n in e.value.message


def test_a_folder_without_runs(tmp_path):
    (tmp_path / "notes.txt").write_text("not a dataset")
    with pytest.raises(UserError, match="holds no rayprof runs"):
        open_dataset(str(tmp_path))


# --------------------------------------------------------------------------- the commands


@pytest.fixture()
def cli():
    def invoke(*args):
        return CliRunner().invoke(main, [str(a) for a in args])
    return invoke


def one_line_error(result, *needles):
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for n in needles:
        assert n in lines[0], lines[0]


def test_runs_command(cli, root):
    out = cli("runs", root)
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert lines[0].split() == ["run_id", "name", "started", "duration_s", "status", "workers", "nodes", "steps"]
    assert [line.split()[0] for line in lines[1:]] == [FLEET, SPLIT, SWEEP, OLD, BARE, LIVE]
    assert json.loads(cli("runs", root, "--format", "json").output)[0]["run_id"] == FLEET


def test_query_table_shows_stages_verdicts_and_stragglers(cli, root):
    out = cli("query", root, "--run", FLEET)
    assert out.exit_code == 0, out.output
    text = out.output
    assert "UNSTABLE" in text and "stable" in text and "p99.9" in text
    assert "node 10.0.0.2 (r18, 2 actors)" in text and "most in exec" in text
    assert "actor r34-2 (r34)" in text and "most in prep" in text
    split = cli("query", root, "--run", SPLIT).output
    for label in ("exec (head)", "queue", "exec (tail)", "e2e"):
        assert label in split


def test_query_csv_and_json(cli, root):
    csv = pd.read_csv(io.StringIO(cli("query", root, "--run", FLEET, "--by", "worker,node", "--format", "csv").output))
    assert {"worker", "node", "fps", "total_p999", "stability"} <= set(csv.columns) and len(csv) == 6
    data = json.loads(cli("query", root, "--run", FLEET, "--format", "json").output)
    assert data["runs"] == [FLEET] and len(data["summary"]) == 4 and len(data["stragglers"]) == 2
    assert json.loads(cli("query", root, "--run", FLEET, "--format", "json", "--straggler-pct", "0").output)[
        "stragglers"] is None


def test_query_defaults_to_the_latest_run(cli, root):
    out = cli("query", root)
    assert out.exit_code == 0 and out.output.startswith(f"run {LIVE}")


def test_query_sql(cli, root):
    out = cli("query", root, "--sql", "SELECT run_id, count(*) AS n FROM batches GROUP BY ALL ORDER BY n DESC",
              "--format", "csv")
    assert out.exit_code == 0, out.output
    assert out.output.splitlines()[:2] == ["run_id,n", f"{FLEET},3000"]  # every run unless --run says
    one = cli("query", root, "--run", SPLIT, "--sql", "SELECT DISTINCT role FROM batches ORDER BY 1")
    assert one.output.split() == ["role", "pair", "split"]


@pytest.mark.parametrize("args, needles", [
    (["--sql", "SELEC 1"], ["--sql", "syntax error"]),
    (["--sql", "SELECT 1", "--by", "node"], ["--sql", "--by"]),
    (["--run", "nope"], ["--run", "nope"]),
    (["--by", "wroker"], ["--by", "wroker", "worker"]),
    (["--window", "0"], ["--window"]),
])
def test_query_bad_input(cli, root, args, needles):
    one_line_error(cli("query", root, *args), *needles)


def test_commands_on_a_missing_root(cli, tmp_path):
    one_line_error(cli("runs", tmp_path / "nope"), "ROOT", "does not exist")
    one_line_error(cli("query", tmp_path / "nope"), "ROOT", "does not exist")


# --------------------------------------------------------------------------- a real run


def test_a_real_run(cli, tmp_path, small_video):
    """``rayprof run`` (one worker in this process: a real model, real rows and manifest), then
    the query commands on what it wrote."""
    out = tmp_path / "runs"
    run = cli("run", "--model-name", "mobilenet_v3_small", "--input_path", small_video, "--loop", "--batch-size", "2",
              "--max-steps", "36", "--warmup-steps", "3", "--output", out, "--run-name", "real")
    assert run.exit_code == 0, run.output
    runs = json.loads(cli("runs", out, "--format", "json").output)
    assert [(r["name"], r["status"], r["workers"], r["nodes"], r["steps"]) for r in runs] == [
        ("real", "completed", 1, 1, 36)]
    data = json.loads(cli("query", out, "--format", "json").output)
    (row,) = data["summary"]
    assert (row["steps"], row["frames"], row["roles"], row["window_steps"]) == (33, 66, "full", 11)
    assert row["stability"] in ("stable", "unstable") and row["fps"] > 0
    assert row["read_p50"] <= row["read_p99"] and row["total_p50"] > row["exec_p50"] > 0
    assert data["stragglers"] == []
    text = cli("query", out, "--by", "worker,node,cores").output
    assert "exec" in text and "total" in text


def test_query_prints_a_scaling_sweep_with_its_efficiency(cli, tmp_path):
    """A replicas sweep (1 then 2 actors, each as fast as alone): the sweep table after the
    summary, in the order the points ran, with the replica efficiency fps(2) / (2 × fps(1))."""
    actors = [full_actor("m", r, steps=60, start_ns=gen.T0_NS + i * 60 * 10**9, seed=r, sweep_point=f"replicas={n}",
                         actor_id=f"m-p{i}-{r}") for i, n in enumerate((1, 2)) for r in range(n)]
    write_run(tmp_path, "scale-20260101-000000-0000", actors)
    points = json.loads(cli("query", tmp_path, "--format", "json").output)["sweep"]
    assert [p["sweep_point"] for p in points] == ["replicas=1", "replicas=2"]
    one, two = points
    assert one["replicas"] == 1.0 and two["replicas"] == pytest.approx(two["fps"] / (2 * one["fps"]), rel=1e-3)
    assert 0.8 < two["replicas"] < 1.2  # two actors at one actor's pace each
    table = cli("query", tmp_path).output
    assert "sweep points" in table and "replicas eff." in table
