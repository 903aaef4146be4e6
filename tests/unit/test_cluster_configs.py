"""cluster/: every YAML parses and has what Ray's cluster launcher or KubeRay needs. No Ray is started.

Launcher files are validated against the JSON schema that ships with Ray (ray/autoscaler/ray-schema.json)
and run through Ray's own config preparation, when Ray is installed.
"""

import copy
import importlib.util
import json
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
SCRIPT = CLUSTER / "local_cluster.sh"

LAUNCHER_FILES = ["onprem.yaml", "aws.yaml"]


def load(name: str) -> dict:
    data = yaml.safe_load((CLUSTER / name).read_text())
    assert isinstance(data, dict), f"{name}: not a mapping"
    return data


def commands(cfg: dict, key: str) -> list[str]:
    cmds = cfg[key]
    assert isinstance(cmds, list) and cmds and all(isinstance(c, str) for c in cmds), key
    return cmds


# --------------------------------------------------------------------------- cluster launcher

def check_launcher(cfg: dict) -> None:
    for key in ("cluster_name", "provider", "auth", "max_workers", "setup_commands",
                "head_start_ray_commands", "worker_start_ray_commands", "file_mounts"):
        assert key in cfg, f"missing {key}"
    assert isinstance(cfg["provider"].get("type"), str)
    assert isinstance(cfg["max_workers"], int) and cfg["max_workers"] >= 0
    assert cfg["auth"].get("ssh_user")

    head, worker = commands(cfg, "head_start_ray_commands"), commands(cfg, "worker_start_ray_commands")
    for cmds in (head, worker):
        assert cmds[0].strip() == "ray stop", "start from a clean node"
        assert "RAY_USAGE_STATS_ENABLED=0" in " ".join(cmds)
    head_start = next(c for c in head if "ray start" in c)
    assert "--head" in head_start and "--port=6379" in head_start
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in head_start
    worker_start = next(c for c in worker if "ray start" in c)
    assert "--address=$RAY_HEAD_IP:6379" in worker_start

    setup = " ".join(commands(cfg, "setup_commands"))
    assert "pip install" in setup and "rayprof" in setup, "setup_commands must install rayprof"
    assert "~/rayprof" in cfg["file_mounts"], "the repo is mounted where setup_commands installs from"


def check_onprem(cfg: dict) -> None:
    check_launcher(cfg)
    provider = cfg["provider"]
    assert provider["type"] == "local"
    assert isinstance(provider["head_ip"], str) and provider["head_ip"]
    assert isinstance(provider["worker_ips"], list) and provider["worker_ips"]
    assert provider["head_ip"] not in provider["worker_ips"]
    assert cfg["max_workers"] == len(provider["worker_ips"])
    assert "available_node_types" not in cfg, "provider local makes its own single node type"


def check_aws(cfg: dict) -> None:
    check_launcher(cfg)
    provider = cfg["provider"]
    assert provider["type"] == "aws" and provider["region"] and provider["availability_zone"]
    types = cfg["available_node_types"]
    assert isinstance(types, dict) and types
    assert cfg["head_node_type"] in types
    for name, t in types.items():
        assert isinstance(t.get("resources"), dict), name
        assert t["node_config"].get("InstanceType"), name
        assert str(t["node_config"].get("ImageId", "")).startswith("ami-"), name
        assert t.get("min_workers", 0) <= t.get("max_workers", cfg["max_workers"]), name
    gpu = [n for n, t in types.items() if t["resources"].get("GPU", 0) >= 1]
    assert gpu and cfg["head_node_type"] not in gpu, "a GPU worker type besides the head"
    assert any(k not in ("CPU", "GPU", "memory") for n in gpu for k in types[n]["resources"]), \
        "the GPU type advertises a custom resource"
    assert sum(t.get("min_workers", 0) for t in types.values()) <= cfg["max_workers"]


# --------------------------------------------------------------------------- KubeRay

def kuberay_custom_resources(value: str) -> dict:
    """KubeRay wants rayStartParams.resources as '"{\\"name\\": 1}"' (quotes and backslashes kept)."""
    assert value.startswith('"') and value.endswith('"'), value
    return json.loads(value[1:-1].replace('\\"', '"'))


def check_container(pod: dict, where: str) -> dict:
    containers = pod["spec"]["containers"]
    assert isinstance(containers, list) and containers, where
    c = containers[0]
    assert c.get("name") and isinstance(c.get("image"), str) and c["image"], f"{where}: image"
    env = {e["name"]: e.get("value") for e in c.get("env", [])}
    assert env.get("RAY_USAGE_STATS_ENABLED") == "0", f"{where}: usage stats off"
    return c


def check_raycluster_spec(spec: dict) -> dict:
    assert isinstance(spec.get("rayVersion"), str)
    head = spec["headGroupSpec"]
    params = head["rayStartParams"]
    assert isinstance(params, dict)
    assert all(isinstance(v, str) for v in params.values()), "KubeRay wants string rayStartParams"
    head_container = check_container(head["template"], "head")
    groups = spec["workerGroupSpecs"]
    assert isinstance(groups, list) and groups
    gpus = 0
    for g in groups:
        name = g["groupName"]
        assert isinstance(g["replicas"], int)
        assert g.get("minReplicas", 0) <= g["replicas"] <= g.get("maxReplicas", g["replicas"]), name
        assert all(isinstance(v, str) for v in g.get("rayStartParams", {}).values()), name
        if "resources" in g.get("rayStartParams", {}):
            custom = kuberay_custom_resources(g["rayStartParams"]["resources"])
            assert custom and all(isinstance(v, (int, float)) for v in custom.values()), name
        container = check_container(g["template"], name)
        limits = container.get("resources", {}).get("limits", {})
        gpus += int(limits.get("nvidia.com/gpu", 0))
    assert gpus >= 1, "a worker group with an nvidia.com/gpu limit"
    return head_container


def check_raycluster(doc: dict) -> None:
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayCluster"
    assert doc["metadata"]["name"]
    check_raycluster_spec(doc["spec"])


def check_rayjob(doc: dict) -> None:
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayJob"
    assert doc["metadata"]["name"]
    spec = doc["spec"]
    argv = shlex.split(spec["entrypoint"])
    assert argv[:2] == ["rayprof", "submit"]
    assert (REPO / argv[2]).is_file(), f"the entrypoint's spec {argv[2]} is in the repo"
    assert "--output" in argv
    output = argv[argv.index("--output") + 1]
    assert output.startswith("/"), "a relative output lands in the job's temporary working dir"
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert isinstance(runtime_env, dict) and runtime_env.get("working_dir")
    assert spec["shutdownAfterJobFinishes"] is True
    head = check_raycluster_spec(spec["rayClusterSpec"])
    mounts = [m["mountPath"] for m in head.get("volumeMounts", [])]
    assert any(output == m or output.startswith(m.rstrip("/") + "/") for m in mounts), \
        f"{output} is on a volume of the head, where the driver and its sink run"
    head_volumes = {v["name"] for v in spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["volumes"]}
    assert {m["name"] for m in head["volumeMounts"]} <= head_volumes


CHECKS = {
    "onprem.yaml": check_onprem,
    "aws.yaml": check_aws,
    "kuberay-raycluster.yaml": check_raycluster,
    "kuberay-rayjob.yaml": check_rayjob,
}


def yaml_files() -> list[str]:
    return sorted(p.name for p in CLUSTER.iterdir() if p.suffix in (".yaml", ".yml"))


def test_every_yaml_in_cluster_has_a_check():
    assert yaml_files() == sorted(CHECKS), "add a check to CHECKS for each YAML in cluster/ (or remove a stale one)"


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_yaml_has_the_keys_ray_needs(name):
    CHECKS[name](load(name))


def test_kuberay_files_agree():
    """The RayJob's cluster is the RayCluster's (same image, worker groups, volumes)."""
    cluster, job = load("kuberay-raycluster.yaml")["spec"], load("kuberay-rayjob.yaml")["spec"]["rayClusterSpec"]
    assert cluster["rayVersion"] == job["rayVersion"]
    image = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]["image"]
    for spec in (cluster, job):
        pods = [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]
        assert {p["spec"]["containers"][0]["image"] for p in pods} == {image}
    assert [g["groupName"] for g in cluster["workerGroupSpecs"]] == [g["groupName"] for g in job["workerGroupSpecs"]]


# --------------------------------------------------------------------------- Ray's own validation

def _ray_schema() -> Path:
    spec = importlib.util.find_spec("ray")
    if spec is None or not spec.origin:
        pytest.skip("ray is not installed: no cluster-launcher schema to validate against")
    path = Path(spec.origin).parent / "autoscaler" / "ray-schema.json"
    if not path.is_file():
        pytest.skip(f"this ray ships no {path.name}")
    return path


@pytest.mark.parametrize("name", LAUNCHER_FILES)
def test_launcher_yaml_matches_rays_schema(name):
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(_ray_schema().read_text())
    jsonschema.validate(load(name), schema)


@pytest.mark.parametrize("name", LAUNCHER_FILES)
def test_launcher_yaml_passes_rays_config_preparation(name):
    """What `ray up` does before it contacts any machine: fill defaults, then validate."""
    _ray_schema()
    try:
        from ray.autoscaler._private.util import prepare_config, validate_config
    except ImportError as e:  # private API: moved in this Ray version
        pytest.skip(f"ray.autoscaler._private.util changed: {e}")
    prepared = prepare_config(copy.deepcopy(load(name)))
    validate_config(prepared)
    assert prepared["head_node_type"] in prepared["available_node_types"]


# --------------------------------------------------------------------------- the local cluster script

def test_local_cluster_script_parses_and_helps():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    assert SCRIPT.stat().st_mode & 0o111, "local_cluster.sh is executable"
    text = SCRIPT.read_text()
    assert "set -euo pipefail" in text and "RAY_USAGE_STATS_ENABLED=0" in text
    out = subprocess.run(["bash", str(SCRIPT), "--help"], capture_output=True, text=True, timeout=10)
    assert out.returncode == 0 and "start N" in out.stdout
    bad = subprocess.run(["bash", str(SCRIPT), "start", "zero"], capture_output=True, text=True, timeout=10)
    assert bad.returncode != 0 and "number of nodes" in bad.stderr


def test_readme_names_every_file():
    readme = (CLUSTER / "README.md").read_text()
    for p in CLUSTER.iterdir():
        if p.name != "README.md":
            assert f"`{p.name}`" in readme, f"cluster/README.md does not mention {p.name}"
