"""Connecting to Ray, and the runtime environment that takes rayprof to every node.

Which cluster: ``--address``, the spec's ``address``, then ``RAY_ADDRESS`` (``auto``,
``host:port``, ``ray://host:10001``); with none of them an embedded local Ray is started.

Code shipping. On an existing cluster the nodes need not have rayprof installed: the run's
runtime environment ships the rayprof package that is running here (``py_modules``), on top of
the spec's own ``runtime_env`` (``pip``, ``env_vars``, ...). It is given to ``ray.init``, the job
level, and not to each actor, because

* Ray uploads a local directory only at the job level: an actor's or a task's ``runtime_env`` may
  only name packages uploaded already (``gcs://`` URIs);
* everything the driver starts needs rayprof on its node: the worker actors, the sink actor and
  the node-inventory tasks; a job-level environment reaches all of them.

Inside a Ray job (``ray job submit``) the job has a runtime environment of its own
(``--working-dir``, ``--runtime-env-json``). ``ray.init`` merges ours into it field by field
(``env_vars`` variable by variable) and refuses a field that both name; that is checked here
first and said in one line. An embedded Ray runs on this machine, where rayprof is importable
already: nothing is shipped, the spec's ``runtime_env`` still applies.
"""

from __future__ import annotations

import copy
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ray
from ray.runtime_env import RuntimeEnv

from ..errors import UserError
from ..spec import FleetSpec

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # the rayprof package this process runs
JOB_CONFIG_VAR = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by Ray's job supervisor for the entrypoint


def run_runtime_env(user_env: Mapping[str, Any], ship_code: bool) -> dict:
    """The runtime environment of a run: the spec's ``runtime_env``, with the running rayprof
    package first in ``py_modules`` when ``ship_code`` (the nodes belong to an existing cluster)."""
    env = copy.deepcopy(dict(user_env))
    if ship_code:
        env["py_modules"] = [str(PACKAGE_DIR), *env.get("py_modules", [])]
    return env


def ray_job_runtime_env(environ: Mapping[str, str] = os.environ) -> dict | None:
    """The runtime environment of the Ray job this process is the entrypoint of; None outside
    a Ray job."""
    raw = environ.get(JOB_CONFIG_VAR)
    return None if raw is None else dict(json.loads(raw).get("runtime_env") or {})


def merge_conflicts(job_env: Mapping[str, Any], run_env: Mapping[str, Any]) -> list[str]:
    """What Ray's merge of a job's runtime environment with ``ray.init``'s refuses: a field
    that both name, or an environment variable that both set."""
    fields = sorted((set(job_env) & set(run_env)) - {"env_vars"})
    variables = set(job_env.get("env_vars") or {}) & set(run_env.get("env_vars") or {})
    return fields + [f"env_vars.{v}" for v in sorted(variables)]


def relative_output_warning(output: str, job_env: Mapping[str, Any] | None) -> str | None:
    """A warning when the driver of a Ray job writes the dataset under a relative path: it lands
    in the job's working directory on the head node, a temporary copy made by Ray when the job
    was submitted with a ``working_dir``."""
    if job_env is None or "://" in output or Path(output).is_absolute():
        return None
    where = Path(output).resolve()
    copy_note = ", inside Ray's temporary copy of the job's working_dir, which Ray may delete" if (
        job_env.get("working_dir")) else ""
    return (f"rayprof: output '{output}' is relative: in this Ray job it is {where}{copy_note}; "
            "to keep the dataset, pass an absolute --output on a disk you can reach, or an s3:// URI")


def _check_user_env(user_env: Mapping[str, Any]) -> None:
    """Ray's own validation of the spec's ``runtime_env``, said as a UserError."""
    try:
        RuntimeEnv(**copy.deepcopy(dict(user_env)))
    except (TypeError, ValueError) as e:
        raise UserError("runtime_env", dict(user_env), f"is not a valid Ray runtime_env ({str(e).splitlines()[0]})",
                        "see https://docs.ray.io/en/latest/ray-core/handling-dependencies.html") from None


def _check_ray_job(run_env: dict, output: str) -> None:
    """Inside a Ray job: refuse a runtime_env Ray could not merge, warn about a relative output."""
    job_env = ray_job_runtime_env()
    if job_env is None:
        return
    clash = merge_conflicts(job_env, run_env)
    if clash:
        raise UserError("runtime_env", ", ".join(clash), "is set both by the Ray job submission and by this run "
                        "(rayprof adds py_modules itself to ship its own code)",
                        "name each field once: in the spec's runtime_env or in `ray job submit`, not both")
    warning = relative_output_warning(output, job_env)
    if warning:
        print(warning, file=sys.stderr)


def connect(address: str | None, spec: FleetSpec) -> bool:
    """Connect to a cluster with the run's runtime environment, or start an embedded local Ray.
    Returns True when embedded (then the caller shuts it down)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if ray.is_initialized():  # a caller (a notebook, a test) connected and chose the runtime env
        if spec.runtime_env:
            raise UserError("runtime_env", dict(spec.runtime_env), "cannot be applied: Ray was initialized before "
                            "rayprof submit started", "pass it to your own ray.init(runtime_env=...) instead")
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    _check_user_env(spec.runtime_env)
    run_env = run_runtime_env(spec.runtime_env, ship_code=bool(address))
    _check_ray_job(run_env, spec.output)
    kwargs = dict(include_dashboard=False, logging_level="WARNING", log_to_driver=True, runtime_env=run_env)
    if address:
        try:
            ray.init(address=address, **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise UserError("address", address, f"cannot connect to a Ray cluster there ({str(e).splitlines()[0]})",
                            "start one with `ray start --head`, fix the address, or leave it unset for an embedded local Ray") from None
        return False
    ray.init(address="local", num_cpus=os.cpu_count(), **kwargs)  # never someone else's `ray start` here
    return True
