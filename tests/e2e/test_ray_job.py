"""The Ray Jobs way: `ray job submit --working-dir <repo> -- rayprof submit jobs/fleet.yaml` against
a real local Ray head (cluster/local_cluster.sh, on its own ports and temp dir, with the dashboard
that serves the Jobs API).

The cluster's processes get no PYTHONPATH: the job's driver finds rayprof in its working_dir (or
installed), and the actors get it from the runtime environment rayprof gives `ray.init`.
"""

import json
import subprocess
import uuid
from pathlib import Path

import pandas as pd
import pytest

from tests.support.cli import rayprof_cmd
from tests.support.local_cluster import RAY_CLI, SCRIPT, cluster_env, sessions

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
FLEET = {"resnet18-b8": 1, "mobilenet-b16": 1, "mobilenet-b4-x2": 2, "resnet18-retrain": 1}  # jobs/fleet.yaml
SHRINK = ["defaults.max_steps=4", "defaults.warmup_steps=1", "defaults.prep.size=64"]


@pytest.fixture(scope="module")
def head():
    """A one-node Ray (the head, with its dashboard) and the environment to talk to it."""
    with cluster_env() as (env, port, state, sids):
        env.pop("PYTHONPATH", None)
        env["RAY_AUTH_MODE"] = "disabled"  # what local_cluster.sh gives the nodes; clients need the same
        start = subprocess.run(["bash", str(SCRIPT), "start", "1", "--num-cpus", str(sum(FLEET.values())),
                                "--object-store-mb", "200"], env=env, capture_output=True, text=True, timeout=180)
        sids.extend(sessions(state))
        assert start.returncode == 0, start.stdout + start.stderr
        yield env, f"http://127.0.0.1:{port + 2}"


def test_ray_job_submit_runs_the_fleet(head, tmp_path):
    env, dashboard = head
    out = tmp_path / "runs"
    sets = [a for s in SHRINK for a in ("--set", s)]
    job = subprocess.run(
        [str(RAY_CLI), "job", "submit", "--address", dashboard, "--submission-id", f"rayprof-test-{uuid.uuid4().hex[:8]}",
         "--working-dir", str(REPO), "--", *rayprof_cmd(), "submit", "jobs/fleet.yaml", "--output", str(out), *sets],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=540)
    assert job.returncode == 0, job.stdout[-6000:] + job.stderr[-3000:]
    assert "succeeded" in job.stdout

    (run_dir,) = out.glob("run=*")
    manifest = json.loads((run_dir / "_manifest.json").read_text())
    assert manifest["status"] == "completed" and manifest["launcher"] == "ray"  # the job's cluster, not embedded
    df = pd.read_parquet(run_dir)
    assert df.groupby("worker").actor_id.nunique().to_dict() == FLEET
    for actor_id, rows in df.groupby("actor_id"):  # every step of every actor
        assert sorted(rows.step) == [0, 1, 2, 3], actor_id
    assert {a["status"] for a in manifest["actors"].values()} == {"completed"}
