"""The job spec: pydantic models of the YAML, ``--set`` overrides, one-line errors.

A spec has top-level settings, ``defaults`` applied to every worker, and a ``workers`` list of
per-worker overrides. Each worker's settings are ``defaults`` deep-merged with its own entry,
then validated as one :class:`WorkerSpec`; an error is reported at the YAML path where the
offending value was written (``workers[1].model.name`` or ``defaults.batch_size``).

Loading is safe (``yaml.safe_load``): a spec cannot make rayprof run code.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from .errors import UserError, did_you_mean

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_UNSAFE_NAME = (
    "is not a safe name (it becomes a folder name); "
    "use letters, digits, '_', '-' and '.', at most 64, starting with a letter or digit"
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceSpec(_Strict):
    """Where frames come from. A plain string is shorthand for ``{uri: <string>}``."""

    uri: str = Field(description="video file path, camera index ('0'), http(s):// or rtsp:// URL, or 'synthetic'")
    loop: bool = Field(False, description="files: start again at the end")
    width: int = Field(640, gt=0, description="synthetic: frame width")
    height: int = Field(480, gt=0, description="synthetic: frame height")
    fps: float = Field(30.0, ge=0, description="synthetic: generation rate (0 = unpaced)")
    open_timeout_s: float = Field(10.0, gt=0, description="streams/cameras: time allowed to open")
    read_timeout_s: float = Field(5.0, gt=0, description="streams/cameras: time allowed per frame")
    reconnect_s: float = Field(30.0, ge=0, description="live: keep reconnecting this long, then end")
    buffer_frames: int = Field(64, gt=0, description="live: frames kept; older ones are dropped")


class ModelSpec(_Strict):
    """The model. A plain string is shorthand for ``{name: <string>}``."""

    name: str = Field(description="torchvision classification model (rayprof models lists them)")
    weights: str | None = Field(None, description="none, a torchvision weights name, or a local state-dict path")
    num_classes: int | None = Field(None, gt=0, description="retrain: classes of the new head")
    compile: bool = Field(False, description="torch.compile (inference)")
    amp: bool = Field(False, description="autocast: bf16 on CPU, fp16 on CUDA (grad scaler in retrain)")
    lr: float = Field(1e-3, gt=0, description="retrain: learning rate of the new head")
    split: str | list[str] | None = Field(
        None, description="cut the model after this module (layer3, or resnet50:layer3): a head and a tail half; "
        "a list (none = the unsplit model) or all sweeps the cut, one point after another")

    @field_validator("split", mode="before")
    @classmethod
    def _split_list(cls, v: Any) -> Any:
        if isinstance(v, list):
            if not v:
                raise ValueError("is an empty list; list one or more split points, or remove the key")
            items = [str(x).strip() for x in v]
            if len(set(items)) != len(items):
                raise ValueError("lists a point twice; list each split point once")
            return items
        return None if v is None else str(v).strip()

    @field_validator("weights", mode="before")
    @classmethod
    def _none_string(cls, v: Any) -> Any:
        return None if isinstance(v, str) and v.strip().lower() in ("", "none", "null") else v


class PairSpec(_Strict):
    """How a split model's halves run (``model.split``). The head owns the source, the pinned
    preprocessing and the head half; the tail runs the rest on ``device`` (the worker's)."""

    window: int = Field(2, ge=1, description="batches in flight between head and tail")
    head_device: str = Field("cpu", description="where the head half runs: cpu, cuda, cuda:N or auto")
    tail_cores: str = Field("auto", description="the tail actor's cores: auto, all, or a set like '2-3'")
    placement: Literal["any", "same-node", "different-nodes"] = Field(
        "any", description="the tail on the head's node, on another node, or wherever it fits")
    in_process: bool = Field(False, description="both halves in one actor, the activation moved between devices")

    @field_validator("tail_cores", mode="before")
    @classmethod
    def _cores_str(cls, v: Any) -> Any:
        return _cores_text(v)


class PrepSpec(_Strict):
    """Preprocessing. A plain string is shorthand for ``{level: <string>}``."""

    level: Literal["simple", "medium", "complex"] = "simple"
    device: str = Field("cpu", description="cpu, cuda, cuda:N or auto")
    size: int = Field(224, gt=0, description="output side length in pixels")


def _cores_text(v: Any) -> Any:
    """``cores: 3`` and ``cores: [0, 2]`` as the core-set strings they mean."""
    if isinstance(v, int) and not isinstance(v, bool):
        return str(v)
    if isinstance(v, list) and all(isinstance(x, int) for x in v):
        return ",".join(str(x) for x in v)
    return v


class TorchProfileSpec(_Strict):
    """``profile.torch``: a torch.profiler Chrome trace per actor. ``true`` takes the defaults."""

    wait: int = Field(2, ge=0, description="steps skipped before each cycle")
    warmup: int = Field(2, ge=0, description="steps traced but discarded (profiler warm-up)")
    active: int = Field(5, ge=1, description="steps recorded per cycle")
    repeat: int = Field(1, ge=0, description="cycles (0 = until the run ends)")
    record_shapes: bool = False
    profile_memory: bool = False
    with_stack: bool = False


class NsysSpec(_Strict):
    """``profile.nsys``: run the actor under Nsight Systems. ``true`` takes the defaults."""

    options: dict[str, str | int | float | bool] = Field(
        default_factory=lambda: {"t": "cuda,cudnn,cublas,nvtx,osrt"},
        description="nsys profile options (name: value, without dashes); nvtx is always traced")
    wait_s: float = Field(120.0, gt=0, description="how long the driver waits for the reports after the run")


class ProfileSpec(_Strict):
    """Profilers for a worker's actors."""

    torch: TorchProfileSpec | None = None
    nsys: NsysSpec | None = None

    @field_validator("torch", "nsys", mode="before")
    @classmethod
    def _flag(cls, v: Any) -> Any:
        if v is True:
            return {}
        if v is False:
            return None
        return v


class WorkerSpec(_Strict):
    """One worker's resolved settings (defaults merged with its own entry)."""

    name: str = "worker"
    replicas: int = Field(1, ge=1)
    source: SourceSpec
    model: ModelSpec
    mode: Literal["inference", "retrain"] = "inference"
    batch_size: int = Field(8, ge=1)
    prep: PrepSpec = PrepSpec()
    device: str = Field("auto", description="where the model runs: auto, cpu, cuda, cuda:N")
    cores: str = Field("auto", description="auto, all, or a core set like '0-3' / '0,2,4-5'")
    gpus: float | None = Field(None, ge=0, description="GPUs per actor, fractions share one GPU (unset: split evenly)")
    resources: dict[str, float] = Field(default_factory=dict, description="custom Ray resources per actor, e.g. {camera: 1}")
    node: str | None = Field(None, description="run on this node: Ray node id, IP or hostname")
    spread: bool = Field(False, description="replicas on different nodes while nodes last")
    profile: ProfileSpec = ProfileSpec()
    pair: PairSpec = PairSpec()
    pipeline: Literal["serial", "overlap"] = Field(
        "serial", description="serial: read, prep and exec one after another (the original tool); overlap: read "
        "and prep the next batch on a background thread while the model runs this one")
    max_steps: int = Field(100, ge=0, description="steps (batches) to run; 0 = until the source ends")
    warmup_steps: int = Field(5, ge=0, description="first steps flagged warmup, left out of summaries")
    seed: int = 0

    @field_validator("source", mode="before")
    @classmethod
    def _source_str(cls, v: Any) -> Any:
        return {"uri": str(v)} if isinstance(v, (str, int)) else v

    @field_validator("model", mode="before")
    @classmethod
    def _model_str(cls, v: Any) -> Any:
        return {"name": v} if isinstance(v, str) else v

    @field_validator("prep", mode="before")
    @classmethod
    def _prep_str(cls, v: Any) -> Any:
        return {"level": v} if isinstance(v, str) else v

    @field_validator("cores", mode="before")
    @classmethod
    def _cores_str(cls, v: Any) -> Any:
        return _cores_text(v)

    @field_validator("pipeline")
    @classmethod
    def _pipeline_unsplit(cls, v: str, info: ValidationInfo) -> str:
        """A two-actor split's head keeps ``wait_ms`` for its window: it pipelines with its tail already."""
        model, pair = info.data.get("model"), info.data.get("pair")
        if v == "overlap" and model is not None and model.split is not None and pair is not None and not pair.in_process:
            raise ValueError("is not supported for a split model's two actors (its head overlaps with its tail "
                             "already); set pair.in_process: true (both halves in one actor), or pipeline: serial")
        return v

    @field_validator("name")
    @classmethod
    def _name_safe(cls, v: str) -> str:
        if not _NAME.match(v) or ".." in v:
            raise ValueError(_UNSAFE_NAME)
        return v


class SweepSpec(_Strict):
    """``sweep:``: a grid of settings run one point after another, as one run. Every key is a
    list; the points are every combination, the keys varying in the order they are declared
    here (batch_size slowest, split fastest). See :mod:`rayprof.sweep`."""

    batch_size: list[int] | None = Field(None, description="batch sizes")
    replicas: list[int] | None = Field(None, description="replicas per worker")
    nodes: list[int] | None = Field(None, description="how many of the cluster's nodes to use (the driver's first)")
    model: list[str] | None = Field(None, description="model names")
    device: list[str] | None = Field(None, description="where the model runs")
    prep_device: list[str] | None = Field(None, description="where preprocessing runs")
    split: list[str] | None = Field(None, description="split points (none: unsplit)")
    workers: list[str] | None = Field(None, description="the workers the sweep applies to (default: all)")

    @field_validator("*", mode="before")
    @classmethod
    def _list(cls, v: Any) -> Any:
        return v if v is None or isinstance(v, list) else [v]


class FleetSpec(_Strict):
    """The whole job."""

    run: str = Field("rayprof", description="run name (the run id adds a timestamp)")
    output: str = Field("runs", description="dataset root folder")
    address: str | None = Field(None, description="Ray address; unset: RAY_ADDRESS or an embedded local Ray")
    flush_interval_s: float = Field(1.0, gt=0, le=60, description="how often workers ship rows to the sink")
    sink: Literal["auto", "driver", "direct"] = Field(
        "auto", description="driver: workers ship rows to a sink actor on the driver's node; direct: each worker "
        "writes to `output` itself (shared path or object store); auto: direct for URIs (s3://...), else driver")
    runtime_env: dict[str, Any] = Field(default_factory=dict, description="Ray runtime_env added to every actor (pip, env_vars, ...)")
    defaults: dict[str, Any] = Field(default_factory=dict)
    workers: list[WorkerSpec] = Field(min_length=1)
    sweep: SweepSpec | None = Field(None, description="a grid of settings, run one point after another")

    @field_validator("run")
    @classmethod
    def _run_safe(cls, v: str) -> str:
        if not _NAME.match(v) or ".." in v:
            raise ValueError(_UNSAFE_NAME)
        return v


# --------------------------------------------------------------------------- loading

_TOP_KEYS = set(FleetSpec.model_fields)


def _merge(base: dict, over: dict) -> dict:
    """Deep merge: ``over`` wins; nested dicts merge; shorthand strings replace."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _expand_shorthand(d: dict) -> dict:
    """Turn ``model: resnet50`` into ``model: {name: resnet50}`` etc. so merges compose."""
    d = dict(d)
    for key, inner in (("source", "uri"), ("model", "name"), ("prep", "level")):
        if isinstance(d.get(key), (str, int)) and not isinstance(d.get(key), bool):
            d[key] = {inner: str(d[key]) if key == "source" else d[key]}
    return d


def _has_path(d: Any, path: tuple) -> bool:
    for part in path:
        if isinstance(d, dict) and part in d:
            d = d[part]
        elif isinstance(d, list) and isinstance(part, int) and part < len(d):
            d = d[part]
        else:
            return False
    return True


def _model_at(path: tuple, root: type[BaseModel]) -> type[BaseModel] | None:
    """The model that holds the key at ``path`` below ``root`` (None: not a model there)."""
    model: type[BaseModel] | None = root
    for part in path:
        if model is None or part not in model.model_fields:
            return None
        ann = model.model_fields[part].annotation
        options = [a for a in getattr(ann, "__args__", ()) if isinstance(a, type)] or [ann]  # X | None
        model = next((a for a in options if isinstance(a, type) and issubclass(a, BaseModel)), None)
    return model


def _fmt_path(parts: tuple) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def _get(d: Any, path: tuple) -> Any:
    for p in path:
        d = d[p]
    return d


def _error_from_pydantic(err: dict, where: str, raw_worker: dict | None, raw_defaults: dict | None, index: int | None) -> UserError:
    loc = tuple(p for p in err["loc"] if p not in ("function-after[_name_safe(), str]",))
    value = err.get("input")
    kind = err["type"]
    # which YAML place wrote the value: the worker's own entry, or defaults
    prefix = where
    if index is not None:
        if raw_worker is not None and _has_path(raw_worker, loc):
            prefix = f"workers[{index}]"
        elif raw_defaults is not None and _has_path(raw_defaults, loc):
            prefix = "defaults"
        else:
            prefix = f"workers[{index}]"
    field = ".".join(p for p in (prefix, _fmt_path(loc)) if p)
    if kind == "extra_forbidden":
        parent = _model_at(loc[:-1], FleetSpec if index is None else WorkerSpec)
        choices = list(parent.model_fields) if parent else []
        key = loc[-1]
        return UserError(field, key, "is not a known key", "remove it or fix its spelling" + (did_you_mean(str(key), choices) or f" (known keys: {', '.join(choices)})"))
    if kind == "missing":
        return UserError(field, None, "is required", f"set {field} in the spec or in defaults")
    if kind == "literal_error":
        ctx = err.get("ctx", {}).get("expected", "")
        return UserError(field, value, "is not allowed", f"use one of {ctx}" + did_you_mean(str(value), re.findall(r"'([^']+)'", ctx)))
    ctx = err.get("ctx", {})
    fixes = {
        "greater_than_equal": f"set it to {ctx.get('ge')} or more",
        "greater_than": f"set it above {ctx.get('gt')}",
        "less_than_equal": f"set it to {ctx.get('le')} or less",
        "int_parsing": "write a whole number",
        "int_type": "write a whole number",
        "int_from_float": "write a whole number",
        "float_parsing": "write a number",
        "float_type": "write a number",
        "bool_parsing": "write true or false",
        "bool_type": "write true or false",
        "string_type": "write a string (quote it in YAML)",
        "dict_type": "write a mapping of key: value pairs",
        "model_type": "write a mapping of key: value pairs",
        "list_type": "write a list",
        "too_short": "add at least one entry",
    }
    msg = err["msg"].removeprefix("Value error, ")
    problem, _, fix = msg.partition("; ")
    fix = fix or fixes.get(kind, "see the job spec reference in the README")
    return UserError(field, value, problem[0].lower() + problem[1:], fix)


def parse_fleet(raw: Any, source: str = "spec") -> FleetSpec:
    """Validate a loaded YAML document; every error becomes one UserError."""
    if not isinstance(raw, dict):
        raise UserError(source, type(raw).__name__, "is not a mapping of keys", "a job spec is a YAML mapping with at least `workers:`")
    for key in raw:
        if key not in _TOP_KEYS:
            raise UserError(str(key), key, "is not a known top-level key", "remove it or fix its spelling" + (did_you_mean(str(key), _TOP_KEYS) or f" (known: {', '.join(sorted(_TOP_KEYS))})"))
    defaults = raw.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise UserError("defaults", defaults, "is not a mapping", "write defaults as key: value pairs")
    defaults = _expand_shorthand(defaults)
    for key in ("name", "replicas"):
        if key in defaults:
            raise UserError(f"defaults.{key}", defaults[key], "is per worker", f"set {key} on each worker instead")
    workers_raw = raw.get("workers")
    if not isinstance(workers_raw, list) or not workers_raw:
        raise UserError("workers", workers_raw, "must be a non-empty list", "add at least one worker, e.g. `workers: [{name: w, model: resnet18}]`")
    workers = []
    for i, w in enumerate(workers_raw):
        if not isinstance(w, dict):
            raise UserError(f"workers[{i}]", w, "is not a mapping", "write each worker as key: value pairs")
        w = _expand_shorthand(w)
        merged = _merge(defaults, w)
        merged.setdefault("name", f"w{i}")
        try:
            workers.append(WorkerSpec.model_validate(merged))
        except ValidationError as e:
            raise _error_from_pydantic(e.errors()[0], f"workers[{i}]", w, defaults, i) from None
    for i, w in enumerate(workers):
        if w.max_steps and w.warmup_steps >= w.max_steps:
            where = f"workers[{i}]" if "warmup_steps" in workers_raw[i] or "max_steps" in workers_raw[i] else "defaults"
            raise UserError(f"{where}.warmup_steps", w.warmup_steps, f"leaves no measured step of max_steps {w.max_steps}",
                            "make warmup_steps smaller than max_steps (or max_steps 0: until the source ends)")
    _check_splits(workers, workers_raw)
    seen: dict[str, int] = {}
    for i, w in enumerate(workers):
        if w.name in seen:
            raise UserError(f"workers[{i}].name", w.name, f"is already the name of workers[{seen[w.name]}]", "give each worker its own name")
        seen[w.name] = i
    top = {k: v for k, v in raw.items() if k != "workers"}
    top["defaults"] = defaults
    try:
        return FleetSpec.model_validate({**top, "workers": workers})
    except ValidationError as e:
        raise _error_from_pydantic(e.errors()[0], "", None, None, None) from None


def parse_split(value: str, field: str = "model.split") -> tuple[str | None, str]:
    """``"resnet50:layer3"`` → ``("resnet50", "layer3")``; ``"layer3"`` → ``(None, "layer3")``."""
    model, _, point = str(value).rpartition(":")
    if not point.strip() or (":" in str(value) and not model.strip()):
        raise UserError(field, value, "is not MODEL:POINT or POINT",
                        "write e.g. resnet50:layer3, or layer3 beside model.name")
    return (model.strip() or None), point.strip()


NO_SPLIT = "none"  # in a sweep list: the unsplit model
ALL_POINTS = "all"


def split_points_of(w: WorkerSpec) -> list[str | None]:
    """The cut points a worker runs, in order (None: unsplit); ``["all"]`` until the driver
    has listed the model's points (:func:`rayprof.driver.resolve_splits`)."""
    value = w.model.split
    if value is None:
        return [None]
    items = value if isinstance(value, list) else [value]
    return [None if item.lower() == NO_SPLIT else parse_split(item)[1] for item in items]


def _check_splits(workers: list[WorkerSpec], workers_raw: list) -> None:
    """``model.split`` and ``pair`` make sense together: the form of each point, a model prefix
    that names the worker's model, ``all`` alone, ``pair`` only beside a split, and sweeps of
    the same length (their points run side by side, one phase after another)."""
    sweeps: dict[int, int] = {}
    for i, w in enumerate(workers):
        raw = workers_raw[i]
        where = f"workers[{i}]" if _has_path(raw, ("model", "split")) else "defaults"
        field = f"{where}.model.split"
        value = w.model.split
        if value is None:
            if "pair" in raw:
                raise UserError(f"workers[{i}].pair", "set", "applies to a split model, and model.split is not set",
                                "set model.split (rayprof split-points MODEL lists the points) or remove pair")
            continue
        items = value if isinstance(value, list) else [value]
        for item in items:
            if item.lower() == ALL_POINTS and isinstance(value, list):
                raise UserError(field, item, "`all` stands alone", "write split: all, or list the points")
            if item.lower() in (ALL_POINTS, NO_SPLIT):
                continue
            model, _ = parse_split(item, field)
            if model and model != w.model.name:
                raise UserError(field, item, f"names model {model} but the worker runs {w.model.name}",
                                f"write {item.rpartition(':')[2]}, or set model.name: {model}")
        if w.pair.in_process and w.pair.placement == "different-nodes":
            raise UserError(f"workers[{i}].pair.placement", w.pair.placement, "cannot apply: pair.in_process runs both halves in one actor",
                            "use placement: any, or in_process: false for two actors")
        if isinstance(value, list) and len(value) > 1:
            sweeps[i] = len(value)
    first = next(iter(sweeps.items()), None)
    for j, m in sweeps.items():
        if m == first[1]:
            continue
        i, n = first
        raise UserError(f"workers[{j}].model.split", f"{m} points", f"but workers[{i}] sweeps {n}; "
                        "the points of sweeping workers run side by side", "list the same number of points in each")


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply ``--set a.b.c=value`` (value parsed as YAML). Workers are addressed by index
    (``workers[0].batch_size`` / ``workers.0.batch_size``) or by name (``workers.r18.batch_size``)."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise UserError("--set", item, "is not KEY=VALUE", "write e.g. --set defaults.batch_size=16")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        parts: list[Any] = [p for p in re.split(r"\.|\[|\]", key.strip()) if p != ""]
        node: Any = raw
        for j, part in enumerate(parts):
            if isinstance(node, list):
                idx = _worker_index(node, part, key)
                if j == len(parts) - 1:
                    node[idx] = value
                else:
                    node = node[idx]
                continue
            if not isinstance(node, dict):
                where = ".".join(parts[:j])
                raise UserError("--set", key, f"{where} is a value, not a mapping",
                                f"set {where}=... itself, or check the key path in the README")
            if j == len(parts) - 1:
                node[part] = value
            elif part not in node or node[part] is None:
                node[part] = {}
                node = node[part]
            else:
                if isinstance(node[part], (str, int)) and part in ("model", "source", "prep"):
                    node[part] = _expand_shorthand({part: node[part]})[part]
                node = node[part]
    return raw


def _worker_index(workers: list, part: str, key: str) -> int:
    if part.isdigit() and int(part) < len(workers):
        return int(part)
    for i, w in enumerate(workers):
        if isinstance(w, dict) and w.get("name") == part:
            return i
    names = [w.get("name") for w in workers if isinstance(w, dict) and w.get("name")]
    raise UserError("--set", key, f"names no worker {part!r}", f"use an index 0..{len(workers) - 1} or a worker name" + did_you_mean(part, names))


def load_yaml(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise UserError("spec", str(path), "does not exist or is not a file", "give the path of a job YAML, e.g. jobs/fleet.yaml")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        tag = re.search(r"constructor for the tag '([^']+)'", str(getattr(e, "problem", "")))
        if tag:  # !!python/object/apply:os.system [...] and the like: safe_load builds no objects
            raise UserError("spec", str(path), f"has the tag {tag[1].replace('tag:yaml.org,2002:', '!!')}{where}, "
                            "which could run code (specs are loaded safely: such tags are refused)",
                            "remove the tag (a spec holds plain strings, numbers, lists and mappings)") from None
        raise UserError("spec", str(path), f"is not valid YAML{where}", "fix the YAML syntax (indentation, colons, quotes)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError("spec", str(path), f"cannot be read ({e.__class__.__name__})", "check the file's permissions and encoding") from None
    return raw if raw is not None else {}


def load_fleet(path: str | Path, overrides: list[str] | None = None, output: str | None = None) -> FleetSpec:
    """Read, override and validate a job spec file (``output`` replaces the spec's, verbatim)."""
    raw = load_yaml(path)
    if overrides:
        if not isinstance(raw, dict):
            raw = {}
        raw = apply_overrides(raw, overrides)
    if output is not None and isinstance(raw, dict):
        raw = {**raw, "output": output}
    spec = parse_fleet(raw, str(path))
    if "run" not in raw:
        stem = re.sub(r"[^A-Za-z0-9_.-]", "-", Path(path).stem) or "rayprof"
        spec = spec.model_copy(update={"run": stem})
    return spec
