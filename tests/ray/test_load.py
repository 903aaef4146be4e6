"""Load (issue 7): 16 actors × 2,000 steps over a simulated three-node cluster, through
``fleet.submit`` with the driver-mode sink. Every step is one row, none twice; the sink's memory
stays bounded and flat as the rows grow; the driver's progress loop keeps running throughout.
``benchmarks/load.py`` runs the same load with bigger knobs and writes the figures down."""

import time

import pytest

ray = pytest.importorskip("ray")

from rayprof.sink import read_manifest  # noqa: E402
from tests.support.load import LoadRun, SinkMemory, load_spec, run_load, simulated_cluster  # noqa: E402

pytestmark = pytest.mark.slow

ACTORS, STEPS = 16, 2000
PEAK_MB = 600  # the sink's bound: a Ray worker with pyarrow is ~150-250 MB; the rows must not add up


@pytest.fixture(scope="module")
def cluster():
    with simulated_cluster(nodes=3, cpus_per_node=2) as c:
        yield c


def test_sixteen_actors_two_thousand_steps_each(cluster, tmp_path, capsys):
    run = run_load(load_spec(tmp_path, ACTORS, STEPS), tmp_path)
    man = read_manifest(tmp_path, run.run_id)
    written_mb = man["dataset_stats"]["bytes"] / 2**20
    rss_early, rss_late = run.rss_mb(0.1, 1 / 3), run.rss_mb(2 / 3, 1.01)
    with capsys.disabled():  # the figures for the README, in CI's log
        print(f"\nload {ACTORS}x{STEPS}: {run.seconds:.1f} s, {run.rows_per_s:,.0f} rows/s; sink peak RSS "
              f"{run.sink_peak_kb / 1024:.0f} MB (max {rss_early:.1f} MB at 10-33% of the steps, {rss_late:.1f} MB "
              f"after 67%; {written_mb:.1f} MB written); {len(run.progress)} progress updates, longest gap "
              f"{run.max_progress_gap_s:.2f} s")

    assert run.exit_code == 0
    assert man["status"] == "completed"
    assert len(man["actors"]) == ACTORS and all(a["status"] == "completed" and a["steps"] == STEPS
                                                for a in man["actors"].values())
    assert man["dataset_stats"]["rows"] == ACTORS * STEPS, "the sink counted every row once"
    # rows equal steps (warm-up steps are rows too), every (actor_id, step) exactly once
    assert set(run.per_actor) == set(man["actors"])
    assert all(r == {"rows": STEPS, "steps": STEPS, "first": 0, "last": STEPS - 1} for r in run.per_actor.values())
    assert len({a["node_id"] for a in man["actors"].values()}) == 3, "spread over the three nodes"

    # the sink's memory: bounded, and flat as rows grow (it holds batches in flight, never the run).
    # Between the two windows at least a third of the rows arrived; a sink that kept even their
    # Parquet bytes would grow by a third of what the run wrote (~8 MB; measured: under 1 MB)
    assert 0 < run.sink_peak_kb / 1024 < PEAK_MB
    assert rss_early > 0 and rss_late > 0, "RSS sampled early and late in the run"
    assert rss_late - rss_early < written_mb / 3

    # the driver stayed responsive: its progress loop ran and saw the steps move in every third
    # of the run (how often is reported, not asserted: the machine is shared)
    assert all(run.progress_in(lo, hi) >= 3 for lo, hi in ((0, 1 / 3), (1 / 3, 2 / 3), (2 / 3, 1.01)))
    steps_seen = [s for _, s in run.progress]
    assert steps_seen == sorted(steps_seen) and len(set(steps_seen)) >= 20, "progress kept moving"


@ray.remote(num_cpus=0)
class Hoarder:
    """A stand-in sink that keeps everything it is given."""

    def __init__(self):
        self.kept = []

    def keep(self, mb: int) -> None:
        self.kept.append(b"x" * (mb * 2**20))  # written, so resident


def test_the_memory_probe_sees_a_sink_that_keeps_its_rows(cluster):
    """The measure above can fail: a sink that grows by 2 MB per step shows it."""
    steps = [0]
    hoarder = Hoarder.options(name="rayprof:probe:sink").remote()
    with SinkMemory(lambda: steps[0], interval_s=0.05) as memory:
        for step in range(1, 31):
            ray.get(hoarder.keep.remote(2))
            steps[0] = step
            deadline = time.monotonic() + 30
            while not memory.samples or memory.samples[-1][0] < step:  # a sample of this step
                assert time.monotonic() < deadline, "no sample"
                time.sleep(0.01)
    ray.kill(hoarder)
    run = LoadRun(0, 0.0, [], memory.samples, memory.peak_kb, target_steps=30)
    assert run.rss_mb(2 / 3, 1.01) - run.rss_mb(0.1, 1 / 3) >= 30, "20 steps apart: 40 MB more"
    assert memory.peak_kb / 1024 >= run.rss_mb(2 / 3, 1.01) >= 60
