"""The run's runtime environment and the checks made before connecting (no Ray is started here:
the real shipping is proven by tests/ray/test_multihost.py and tests/e2e/test_ray_job.py)."""

import json
from pathlib import Path

import pytest
import ray

import rayprof
from rayprof.errors import UserError
from rayprof.fleet import _connect
from rayprof.fleet._connect import (
    JOB_CONFIG_VAR,
    PACKAGE_DIR,
    connect,
    merge_conflicts,
    ray_job_runtime_env,
    relative_output_warning,
    run_runtime_env,
)
from rayprof.spec import parse_fleet


def spec(**top):
    return parse_fleet({"workers": [{"source": "synthetic", "model": "resnet18"}], **top})


def test_the_shipped_package_is_the_running_rayprof():
    assert PACKAGE_DIR == Path(rayprof.__file__).resolve().parent
    assert (PACKAGE_DIR / "fleet" / "_connect.py").is_file()


def test_an_existing_cluster_gets_the_package_on_top_of_the_users_runtime_env():
    user = {"pip": ["einops"], "env_vars": {"OMP_NUM_THREADS": "1"}, "py_modules": ["gcs://_ray_pkg_x.zip"]}
    env = run_runtime_env(user, ship_code=True)
    assert env == {"pip": ["einops"], "env_vars": {"OMP_NUM_THREADS": "1"},
                   "py_modules": [str(PACKAGE_DIR), "gcs://_ray_pkg_x.zip"]}
    assert user["py_modules"] == ["gcs://_ray_pkg_x.zip"]  # the spec's dict is left as it was
    assert run_runtime_env({}, ship_code=True) == {"py_modules": [str(PACKAGE_DIR)]}


def test_an_embedded_ray_gets_only_the_users_runtime_env():
    assert run_runtime_env({"env_vars": {"A": "1"}}, ship_code=False) == {"env_vars": {"A": "1"}}
    assert run_runtime_env({}, ship_code=False) == {}


def test_the_ray_jobs_runtime_env_is_read_from_the_supervisors_variable():
    assert ray_job_runtime_env({}) is None
    job = {"runtime_env": {"working_dir": "gcs://_ray_pkg_abc.zip"}, "metadata": {}}
    assert ray_job_runtime_env({JOB_CONFIG_VAR: json.dumps(job)}) == {"working_dir": "gcs://_ray_pkg_abc.zip"}
    assert ray_job_runtime_env({JOB_CONFIG_VAR: json.dumps({"metadata": {}})}) == {}


def test_merge_conflicts_follow_rays_rules():
    job = {"working_dir": "gcs://w.zip", "pip": ["a"], "env_vars": {"A": "1", "B": "2"}}
    assert merge_conflicts(job, {"py_modules": ["/x"], "env_vars": {"C": "3"}}) == []
    assert merge_conflicts(job, {"pip": ["b"], "env_vars": {"B": "9", "A": "8"}}) == ["pip", "env_vars.A", "env_vars.B"]
    assert merge_conflicts({"py_modules": ["gcs://m.zip"]}, run_runtime_env({}, ship_code=True)) == ["py_modules"]


def test_relative_output_warns_only_inside_a_ray_job(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert relative_output_warning("runs", None) is None
    assert relative_output_warning(str(tmp_path / "runs"), {}) is None
    assert relative_output_warning("s3://bucket/runs", {}) is None
    plain = relative_output_warning("runs", {})
    assert str(tmp_path / "runs") in plain and "absolute --output" in plain and "working_dir" not in plain
    copied = relative_output_warning("runs", {"working_dir": "gcs://_ray_pkg_abc.zip"})
    assert "temporary copy of the job's working_dir" in copied


def test_an_invalid_runtime_env_is_a_user_error_before_ray_starts():
    assert not ray.is_initialized()
    with pytest.raises(UserError) as e:
        connect(None, spec(runtime_env={"env_vars": {"OMP_NUM_THREADS": 1}}))
    assert e.value.field == "runtime_env" and "Dict[str, str]" in e.value.problem
    assert not ray.is_initialized()


def test_a_runtime_env_the_ray_job_also_sets_is_a_user_error(monkeypatch):
    job = {"runtime_env": {"working_dir": "gcs://w.zip", "env_vars": {"OMP_NUM_THREADS": "2"}}}
    monkeypatch.setenv(JOB_CONFIG_VAR, json.dumps(job))
    with pytest.raises(UserError) as e:
        connect("127.0.0.1:1", spec(runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}}))
    assert e.value.field == "runtime_env" and e.value.value == "env_vars.OMP_NUM_THREADS"
    assert not ray.is_initialized()


def test_a_runtime_env_cannot_be_added_to_a_ray_the_caller_started(monkeypatch):
    monkeypatch.setattr(_connect.ray, "is_initialized", lambda: True)
    assert connect(None, spec()) is False  # the caller's Ray is used as it is
    with pytest.raises(UserError, match="ray.init"):
        connect(None, spec(runtime_env={"pip": ["einops"]}))
