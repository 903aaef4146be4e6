"""The summary index (rayprof/index.py): exact percentiles by bisection against numpy, and every
answer ``query`` takes from an index equal to the same answer from a scan of the rows, on the
standard generated dataset (full actors, a split pair, a sweep, a v1 run, warm-up, stragglers);
an index that no longer covers the files is not used."""

import shutil

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from rayprof import index
from rayprof.cli import main
from rayprof.query import open_dataset
from rayprof.sink import list_runs
from tests.support import datasets as gen
from tests.support.datasets import FLEET, LIVE, OLD, SPLIT, SWEEP

QS = [0.0, 0.001, 0.25, 0.5, 0.9, 0.95, 0.99, 0.999, 1.0]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    path = tmp_path_factory.mktemp("indexed")
    gen.fleet_dataset(path)
    for run_id in (FLEET, SPLIT, SWEEP, OLD):
        index.build(path, run_id)
    return str(path)


@pytest.mark.parametrize("sizes", [[1], [7], [3, 1, 5], [1000, 10, 1], [2, 2, 2, 2, 2, 2, 2, 2]])
def test_quantiles_of_sorted_arrays_equal_numpy_on_their_union(sizes):
    rng = np.random.default_rng(len(sizes))
    arrays = [np.sort(np.round(rng.normal(5, 10, n), 1)) for n in sizes]  # ties and negatives
    arrays.append(np.array([]))
    expected = np.quantile(np.concatenate(arrays), QS)
    np.testing.assert_allclose(index.quantiles(arrays, QS), expected, rtol=1e-14, atol=0)


def test_quantiles_of_nothing_are_nan():
    assert np.isnan(index.quantiles([np.array([])], [0.5])).all()


def assert_same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    """Equal values (to 1e-9): a null is a null, whatever the column's dtype."""
    def plain(df):
        df = df.reset_index(drop=True)
        return df.apply(lambda c: c if pd.api.types.is_numeric_dtype(c) else c.astype(object).where(c.notna(), None))
    pd.testing.assert_frame_equal(plain(a), plain(b), check_dtype=False, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("run", [FLEET, SPLIT, SWEEP, OLD, "all"])
def test_an_indexed_run_answers_as_a_scan_does(root, run):
    fast, scan = open_dataset(root, run), open_dataset(root, run, use_index=False)
    # all: the live run and the one without a manifest have none, so the summary scans (the catalogue is mixed)
    assert set(fast.indexes) == ({FLEET, SPLIT, SWEEP, OLD} if run == "all" else {run})
    assert_same(fast.actors.sort_values(["run_id", "actor_id"]), scan.actors.sort_values(["run_id", "actor_id"]))
    for by in (None, ["node"], ["worker", "node"], ["model", "role"], ["actor_id"]):
        for warm in (False, True):
            assert_same(fast.summary(by, include_warmup=warm), scan.summary(by, include_warmup=warm))
    assert_same(fast.summary(window=20, stability_pct=3), scan.summary(window=20, stability_pct=3))
    assert_same(fast.stragglers(), scan.stragglers())
    assert_same(fast.stragglers(include_warmup=True, threshold_pct=5), scan.stragglers(include_warmup=True, threshold_pct=5))


def test_the_index_answers_without_reading_the_rows(root, monkeypatch):
    ds = open_dataset(root, FLEET)
    monkeypatch.setattr(type(ds), "con", property(lambda self: pytest.fail("the views were made")))
    assert len(ds.summary(["worker", "node"])) and len(ds.stragglers())


def test_a_long_window_or_a_step_column_is_answered_by_a_scan(root):
    ds = open_dataset(root, FLEET)
    assert ds._indexed_summary(["worker"], False, None, 10) is not None
    assert ds._indexed_summary(["worker"], False, index.TAIL_STEPS, 10) is None  # reaches before the kept batches
    assert ds._indexed_summary(["frames"], False, None, 10) is None  # not constant per actor


def test_a_stale_index_is_not_used(root, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    assert open_dataset(copy, FLEET).indexes  # a moved dataset keeps its index
    part = next((copy / f"run={FLEET}").glob("worker=*/part-*.parquet"))
    part.rename(part.with_name(part.name.replace(".parquet", "1.parquet")))
    assert not open_dataset(copy, FLEET).indexes
    index.build(copy, FLEET)
    assert open_dataset(copy, FLEET).indexes


def test_rayprof_index_builds_what_has_none(tmp_path):
    gen.fleet_dataset(tmp_path)
    result = CliRunner().invoke(main, ["index", str(tmp_path), "--run", "all"])
    assert result.exit_code == 0, result.output
    indexed = [r for r in list_runs(tmp_path) if open_dataset(tmp_path, r).indexes]
    assert set(indexed) == set(list_runs(tmp_path)) - {LIVE}  # a run still running is left for later
    assert "running" in result.output
