"""Sweeps: a run whose settings change from one point to the next. Pure: no Ray, no I/O.

A spec sweeps in one of two ways, and each point becomes one phase of the run (phases run one
after another, each on the whole cluster):

- ``sweep:`` at the top level, a grid: every combination of the listed values, in key order
  (``batch_size``, ``replicas``, ``nodes``, ``model``, ``device``, ``prep_device``, ``split``),
  applied to the workers it names (all by default); the others run unchanged at every point.
  Labels read ``batch_size=8,replicas=2``.
- ``model.split`` as a list on one or more workers (the split-point sweep): point *k* of every
  sweeping worker runs in phase *k*. Labels read ``split=layer3``.

:func:`points` turns a spec into its points; each point's spec has one split point per worker,
so planning a point is planning an ordinary spec.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import ValidationError

from .errors import UserError, did_you_mean
from .spec import NO_SPLIT, FleetSpec, WorkerSpec, split_points_of

if TYPE_CHECKING:
    import pandas as pd

#: sweep key → the worker field it sets (``nodes`` is the cluster's, ``workers`` a filter)
GRID_KEYS = ("batch_size", "replicas", "nodes", "model", "device", "prep_device", "split")


@dataclass(frozen=True)
class Point:
    """One point of a run: its label (None when the run does not sweep), the spec as it runs
    there, how many nodes it may use (None: all) and the values it sets (key → value)."""

    label: str | None
    spec: FleetSpec
    nodes: int | None = None
    values: tuple[tuple[str, object], ...] = ()


def points(spec: FleetSpec) -> list[Point]:
    """The run's points, in the order they run (a run that does not sweep has one)."""
    if spec.sweep is not None:
        if any(isinstance(w.model.split, list) for w in spec.workers):
            raise UserError("sweep", "with a model.split list", "sweeps twice",
                            "put the split points under sweep.split, or drop the sweep block")
        return _grid(spec)
    lists = [split_points_of(w) for w in spec.workers]
    phases = max(len(p) for p in lists)
    if phases == 1:
        return [Point(None, _with_splits(spec, [p[0] for p in lists]))]
    out = []
    for k in range(phases):
        chosen = [p[k] if len(p) > 1 else p[0] for p in lists]
        here = dict.fromkeys(c or NO_SPLIT for c, p in zip(chosen, lists) if len(p) > 1)
        out.append(Point("split=" + "/".join(here), _with_splits(spec, chosen), values=(("split", "/".join(here)),)))
    return out


def _with_splits(spec: FleetSpec, chosen: list[str | None]) -> FleetSpec:
    """The spec with each worker cut at its chosen point (or unsplit)."""
    workers = [w if w.model.split == c else w.model_copy(update={"model": w.model.model_copy(update={"split": c})})
               for w, c in zip(spec.workers, chosen)]
    return spec.model_copy(update={"workers": workers, "sweep": None})


def _grid(spec: FleetSpec) -> list[Point]:
    sweep = spec.sweep
    keys = [k for k in GRID_KEYS if getattr(sweep, k) is not None]
    if not keys:
        raise UserError("sweep", "{}", "lists no values", f"list values under one or more of: {', '.join(GRID_KEYS)}")
    for k in keys:
        values = getattr(sweep, k)
        if not values:
            raise UserError(f"sweep.{k}", "[]", "is an empty list", "list one or more values, or remove the key")
        if len(set(map(str, values))) != len(values):
            raise UserError(f"sweep.{k}", values, "lists a value twice", "list each value once")
    names = [w.name for w in spec.workers]
    for name in sweep.workers or ():
        if name not in names:
            raise UserError("sweep.workers", name, "is not a worker of this spec" + did_you_mean(name, names),
                            f"name one of: {', '.join(names)}")
    targets = set(sweep.workers or names)
    out = []
    for combo in itertools.product(*(getattr(sweep, k) for k in keys)):
        values = dict(zip(keys, combo))
        workers = [_at(w, values, i) if w.name in targets else w for i, w in enumerate(spec.workers)]
        label = ",".join(f"{k}={v}" for k, v in values.items())
        at = spec.model_copy(update={"workers": workers, "sweep": None})
        out.append(Point(label, _with_splits(at, [split_points_of(w)[0] for w in workers]), values.get("nodes"),
                         tuple(values.items())))
    return out


#: sweep key → the path of the worker setting it sets
_SETTERS = {"batch_size": ("batch_size",), "replicas": ("replicas",), "model": ("model", "name"),
            "device": ("device",), "prep_device": ("prep", "device"), "split": ("model", "split")}


def _at(w: WorkerSpec, values: dict, index: int) -> WorkerSpec:
    """Worker ``w`` (``workers[index]``) with the sweep's values of one point, validated as if
    written in the spec. A wrong swept value is named by its sweep key; a setting of the worker
    that a swept value does not go with (``pipeline: overlap`` and a split point) by the worker's
    field, with the swept value that clashes."""
    try:
        return WorkerSpec.model_validate(_with_values(w, values))
    except ValidationError as e:
        err = e.errors()[0]
    loc, problem = tuple(err["loc"]), err["msg"].removeprefix("Value error, ")
    key = next((k for k, path in _SETTERS.items() if k in values and loc[:len(path)] == path), None)
    if key is not None:
        raise UserError(f"sweep.{key}", values[key], problem, "see the sweep reference in the README")
    # the swept values the worker's setting does not go with, each on its own (else all together)
    clash = {k: v for k, v in values.items() if not _valid(_with_values(w, {k: v}))} or values
    problem, _, fix = problem.partition("; ")
    raise UserError(f"workers[{index}].{'.'.join(map(str, loc))}", _value_at(w.model_dump(), loc),
                    f"{problem}, at " + " and ".join(f"sweep.{k} = {v!r}" for k, v in clash.items()),
                    (f"{fix}, or " if fix else "") + "leave " +
                    " or ".join(f"{v!r} out of sweep.{k}" for k, v in clash.items()))


def _with_values(w: WorkerSpec, values: dict) -> dict:
    """``w``'s settings (a dict) with the sweep's ``values`` set."""
    data = w.model_dump()
    for key, value in values.items():
        path = _SETTERS.get(key)
        if path is None:  # nodes: the cluster's, not the worker's
            continue
        target = data
        for part in path[:-1]:
            target = target[part]
        target[path[-1]] = None if key == "split" and str(value).lower() == NO_SPLIT else value
    return data


def _valid(data: dict) -> bool:
    try:
        WorkerSpec.model_validate(data)
    except ValidationError:
        return False
    return True


def _value_at(data: dict, loc: tuple) -> object:
    """The value at ``loc`` (a pydantic error location) in a worker's settings."""
    for part in loc:
        data = data[part]
    return data


def nodes_field_check(n: int | None, available: int) -> None:
    """``sweep.nodes`` asks for no more nodes than the cluster has."""
    if n is not None and (n < 1 or n > available):
        raise UserError("sweep.nodes", n, f"is more nodes than the cluster has ({available})" if n > available
                        else "is not a number of nodes",
                        f"use 1..{available}, or start more nodes")


# --------------------------------------------------------------------------- scaling


def label_values(label: str | None) -> dict[str, str]:
    """``"nodes=2,replicas=4"`` → ``{"nodes": "2", "replicas": "4"}``."""
    if not label:
        return {}
    return dict(part.split("=", 1) for part in str(label).split(",") if "=" in part)


def scaling(per_point: pd.DataFrame) -> pd.DataFrame:
    """Scaling efficiency of each sweep point from a per-point summary (``sweep_point``, ``fps``:
    the whole fleet's frames over its wall-clock span).

    - ``strong``: the same fleet on more nodes: fps(N nodes) / (N/N₀ · fps(N₀)), N₀ the fewest
      nodes swept, everything else equal.
    - ``weak``: more nodes with as many replicas per node: fps / (N/N₀ · fps of the N₀-node
      point whose replicas are replicas·N₀/N), everything else equal.
    - ``replicas``: more replicas on the same nodes: fps / (R/R₀ · fps(R₀)); 1.0 means each new
      stream runs as fast as the first, less shows where the nodes saturate.

    A point whose reference point was not swept gets NaN in that column."""
    import numpy as np

    values = [label_values(p) for p in per_point["sweep_point"]]
    fps = dict(zip(map(_key, values), per_point["fps"]))

    def eff(v: dict, key: str, ref: dict) -> float:
        base = fps.get(_key(ref))
        n, n0 = float(v[key]), float(ref[key])
        return float(fps[_key(v)] / (n / n0 * base)) if base and n0 else np.nan

    out = {"strong": [], "weak": [], "replicas": []}
    nodes0 = min((int(v["nodes"]) for v in values if "nodes" in v), default=None)
    reps0 = {}
    for v in values:
        if "replicas" in v:
            rest = _key({k: x for k, x in v.items() if k != "replicas"})
            reps0[rest] = min(reps0.get(rest, 10**9), int(v["replicas"]))
    for v in values:
        strong = weak = reps = np.nan
        if nodes0 is not None and "nodes" in v:
            strong = eff(v, "nodes", {**v, "nodes": str(nodes0)})
            if "replicas" in v:
                r = int(v["replicas"]) * nodes0 / int(v["nodes"])
                if r == int(r):
                    weak = eff(v, "nodes", {**v, "nodes": str(nodes0), "replicas": str(int(r))})
        if "replicas" in v:
            base = reps0[_key({k: x for k, x in v.items() if k != "replicas"})]
            reps = eff(v, "replicas", {**v, "replicas": str(base)})
        out["strong"].append(strong)
        out["weak"].append(weak)
        out["replicas"].append(reps)
    return per_point.assign(**out)


def _key(values: dict) -> tuple:
    return tuple(sorted(values.items()))
