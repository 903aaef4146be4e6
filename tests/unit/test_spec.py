"""The job spec: merging, shorthands, overrides, and one-line errors at the right YAML path."""

import pytest
import yaml

from rayprof.errors import UserError
from rayprof.spec import apply_overrides, load_fleet, parse_fleet

BASE = {
    "run": "t",
    "defaults": {"source": "clip.mp4", "model": {"name": "resnet18"}, "batch_size": 4},
    "workers": [{"name": "a", "model": "mobilenet_v3_small"}, {"name": "b", "prep": "medium", "replicas": 2}],
}


def err(raw) -> str:
    with pytest.raises(UserError) as e:
        parse_fleet(raw)
    return e.value.message


def test_defaults_merge_and_shorthands():
    spec = parse_fleet(BASE)
    a, b = spec.workers
    assert (a.model.name, a.batch_size, a.source.uri) == ("mobilenet_v3_small", 4, "clip.mp4")
    assert (b.model.name, b.prep.level, b.replicas) == ("resnet18", "medium", 2)
    # nested merge keeps the defaults' siblings
    raw = {**BASE, "defaults": {**BASE["defaults"], "model": {"name": "resnet18", "amp": True}},
           "workers": [{"name": "a", "model": {"compile": True}}]}
    (w,) = parse_fleet(raw).workers
    assert (w.model.name, w.model.amp, w.model.compile) == ("resnet18", True, True)


def test_seed_flags_all_have_a_key():
    w = parse_fleet(BASE).workers[0]
    for key in ("model.name", "source.uri", "mode", "batch_size", "prep.level", "prep.device", "device",
                "cores", "model.compile", "model.amp", "max_steps", "warmup_steps", "seed", "model.weights"):
        obj = w
        for part in key.split("."):
            obj = getattr(obj, part)


def test_worker_names_default_and_must_be_unique():
    spec = parse_fleet({"defaults": BASE["defaults"], "workers": [{}, {}]})
    assert [w.name for w in spec.workers] == ["w0", "w1"]
    msg = err({**BASE, "workers": [{"name": "a"}, {"name": "a"}]})
    assert msg.startswith("workers[1].name = 'a'") and "own name" in msg


@pytest.mark.parametrize(
    "patch, expected",
    [
        ({"workers": [{"name": "a", "batch_size": 0}]}, "workers[0].batch_size = 0: "),
        ({"workers": [{"name": "a", "batch_size": -3}]}, "workers[0].batch_size = -3: "),
        ({"workers": [{"name": "a", "max_steps": -1}]}, "workers[0].max_steps = -1: "),
        ({"workers": [{"name": "a", "prep": "hard"}]}, "workers[0].prep.level = 'hard': is not allowed; use one of"),
        ({"workers": [{"name": "a", "batchsize": 2}]}, "did you mean 'batch_size'"),
        ({"workers": [{"name": "a", "modle": "x"}]}, "(did you mean 'mode' or 'model' or 'node'?)"),
        ({"workers": [{"name": "a", "model": {"nmae": "x"}}]}, "workers[0].model.nmae = 'nmae': is not a known key"),
        ({"workers": [{"name": "a", "batch_size": "many"}]}, "write a whole number"),
        ({"workers": [{"name": "a", "model": {"amp": "maybe"}}]}, "write true or false"),
        ({"workers": [{"name": "../../etc"}]}, "is not a safe name"),
        ({"run": "a/b"}, "run = 'a/b': is not a safe name"),
        ({"wokers": []}, "did you mean 'workers'"),
        ({"workers": []}, "workers = []: must be a non-empty list"),
        ({"workers": [{"name": "a", "mode": "train"}]}, "'inference' or 'retrain'"),
    ],
)
def test_errors_name_field_value_fix(patch, expected):
    msg = err({**BASE, **patch})
    assert expected in msg
    assert "\n" not in msg and "Traceback" not in msg


def test_error_in_defaults_is_reported_at_defaults():
    msg = err({**BASE, "defaults": {**BASE["defaults"], "batch_size": 0}})
    assert msg.startswith("defaults.batch_size = 0")


def test_overrides(tmp_path):
    p = tmp_path / "job.yaml"
    p.write_text(yaml.safe_dump(BASE))
    spec = load_fleet(p, ["defaults.batch_size=16", "workers.b.max_steps=7", "workers[0].model.amp=true",
                          "defaults.prep=complex"])
    a, b = spec.workers
    assert (a.batch_size, a.model.amp, a.model.name, a.prep.level) == (16, True, "mobilenet_v3_small", "complex")
    assert (b.max_steps, b.prep.level) == (7, "medium")
    with pytest.raises(UserError, match="names no worker 'zz'"):
        apply_overrides(BASE, ["workers.zz.batch_size=1"])
    with pytest.raises(UserError, match="KEY=VALUE"):
        apply_overrides(BASE, ["batch_size"])


def test_run_name_defaults_to_file_stem(tmp_path):
    p = tmp_path / "my job.yaml"
    raw = {k: v for k, v in BASE.items() if k != "run"}
    p.write_text(yaml.safe_dump(raw))
    assert load_fleet(p).run == "my-job"


def test_bad_files(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_fleet(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("workers: [\n  - {name: a\n")
    with pytest.raises(UserError, match="is not valid YAML at line"):
        load_fleet(bad)


def test_yaml_cannot_run_code(tmp_path):
    p = tmp_path / "evil.yaml"
    p.write_text("run: !!python/object/apply:os.system ['echo pwned']\nworkers: [{name: a}]\n")
    with pytest.raises(UserError, match="has the tag !!python/object/apply:os.system at line 1, column 6, which could run code"):
        load_fleet(p)


def test_set_through_a_value_is_a_one_line_error():
    with pytest.raises(UserError, match=r"--set = 'defaults.batch_size.x': defaults.batch_size is a value"):
        apply_overrides(BASE, ["defaults.batch_size.x=1"])
    with pytest.raises(UserError, match="is a value, not a mapping"):
        apply_overrides({**BASE, "workers": [{"name": "a", "cores": "0-1"}]}, ["workers[0].cores.x=1"])
    # a shorthand string is expanded so a nested key can be set on it
    raw = apply_overrides(BASE, ["workers.a.model.amp=true"])
    assert raw["workers"][0]["model"] == {"name": "mobilenet_v3_small", "amp": True}


def test_warmup_must_leave_measured_steps():
    msg = err({**BASE, "workers": [{"name": "a", "max_steps": 2, "warmup_steps": 5}]})
    assert msg.startswith("workers[0].warmup_steps = 5: leaves no measured step of max_steps 2")
    parse_fleet({**BASE, "workers": [{"name": "a", "max_steps": 0, "warmup_steps": 5}]})  # until the end: fine


def test_output_is_taken_verbatim(tmp_path):
    p = tmp_path / "job.yaml"
    p.write_text(yaml.safe_dump(BASE))
    for out in ("runs #1", "2024", "null"):
        assert load_fleet(p, output=out).output == out
