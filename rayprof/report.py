"""The run report: one self-contained HTML page of a run's numbers and plots, its PNGs beside it.

Three layers, each usable alone:

- loading (:func:`load_run`): the run's rows (:func:`rayprof.sink.read_table`) and manifest;
- plot data: pure functions from the rows, one per batch end to end
  (:func:`rayprof.metrics.batches`), to small DataFrames and arrays, tested without drawing;
- drawing: matplotlib ``Figure`` objects on the Agg canvas (never pyplot, never a display).
  :func:`write_report` writes each PNG beside the page and embeds it in the page as a ``data:``
  URI, so the page alone is the whole report (inline CSS, no external URL).

A *unit* is what one line of the summary stands for: a worker, or ``worker · point`` in a sweep.
"""

from __future__ import annotations

import base64
import html
import io
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import UserError
from .metrics import BATCH_STAGES, batches, concurrent_fps, summarize
from .query import manifest_of, pick_runs, run_list, started_ns
from .sink import read_table
from .summary import node_names

#: the columns the report reads (what :func:`rayprof.metrics.batches` needs, and the node)
COLUMNS = ["worker", "actor_id", "pair_id", "node_id", "node_ip", "role", "sweep_point", "step", "warmup",
           "t_start", "read_ms", "prep_ms", "exec_ms", "transfer_ms", "wait_ms", "total_ms", "frames", "loss", "pipeline"]
#: the stages a batch's latency is made of, in the order they happen (the tail idling is not one)
COMPONENTS = [s for s in BATCH_STAGES if s not in ("tail_wait", "total")]
STAGE_COLUMNS = [f"{s}_ms" for s in BATCH_STAGES]
STAGE_COLORS = {"read": "#4e79a7", "prep": "#f28e2b", "wait": "#9c755f", "exec": "#59a14f", "head": "#8cd17d",
                "head_wait": "#bab0ac", "transfer": "#e15759", "queue": "#b07aa1", "tail": "#76b7b2"}
TIMELINE_POINTS = 20_000  # drawn per timeline; more steps are thinned to each bin's fastest and slowest
CDF_POINTS = 400  # fractions drawn per CDF; fewer steps are drawn exactly
SCALING_KEYS = ("replicas", "nodes")  # swept keys whose value multiplies the hardware
LATENCY = "total / e2e latency (ms)"
_RANK = {"completed": 0, "pending": 1, "running": 1, "stopped": 2, "failed": 3}


# --------------------------------------------------------------------------- loading


def resolve_run(root: str | Path, run: str) -> str:
    """``run`` as one run id at ``root`` (as ``rayprof query`` selects: ``latest``, an id or the
    start of one); ``latest`` is the run that started last (manifest, else first row)."""
    (run_id,) = pick_runs(root, run_list(root), run, lambda r: _started_ns(root, r), one=True)
    return run_id


def _started_ns(root: str | Path, run_id: str) -> int:
    started = started_ns(manifest_of(root, run_id))
    if started is not None:
        return started
    t = read_table(root, run_id, columns=["t_start"]).column("t_start")
    return int(t.to_numpy().min().astype("int64")) if len(t) else 0


def load_run(root: str | Path, run: str = "latest") -> tuple[str, dict, pd.DataFrame]:
    """The run id, its manifest (``{}`` if none) and its rows (:data:`COLUMNS`, warm-up included)."""
    run_id = resolve_run(root, run)
    rows = read_table(root, run_id, columns=COLUMNS).to_pandas()
    if rows.empty:
        raise UserError("--run", run_id, "has no rows yet (no step has been written)",
                        "wait for its workers' first steps, or report another run")
    return run_id, manifest_of(root, run_id), rows


# --------------------------------------------------------------------------- plot data (pure)


def worker_statuses(manifest: dict) -> dict[str, str]:
    """Per worker, in the spec's order: the worst status among its actors (failed > stopped >
    running > completed); the manifest's actors' ``plan.worker`` and ``status``."""
    out: dict[str, str] = {}
    for actor in manifest.get("actors", {}).values():
        worker, status = actor.get("plan", {}).get("worker"), actor.get("status", "?")
        if worker and _RANK.get(status, 3) >= _RANK.get(out.get(worker, "completed"), 3):
            out[worker] = status
    return out


def _groups(b: pd.DataFrame, cols: list[str]) -> tuple[np.ndarray, pd.DataFrame]:
    """Each row's group number and the groups' keys (one row per group, in that numbering)."""
    g = b.groupby(cols, sort=False, dropna=False, observed=True)
    return g.ngroup().to_numpy(), g.size().index.to_frame(index=False)


def _categorical(codes: np.ndarray, labels: Sequence[str], order: Sequence[str] | None = None) -> pd.Categorical:
    """Per row, ``labels[code]`` as a categorical (labels may repeat), its categories sorted or in ``order``."""
    names, inverse = np.unique(np.asarray(labels, dtype=str), return_inverse=True)
    cat = pd.Categorical.from_codes(inverse[codes], names)
    return cat.reorder_categories(list(order)) if order is not None else cat


def batch_rows(rows: pd.DataFrame, worker_order: Sequence[str] = ()) -> pd.DataFrame:
    """One row per batch end to end (:func:`rayprof.metrics.batches`), slimmed to what the report
    uses: ``warmup``, ``t_start``, ``frames``, the stage columns (``<stage>_ms``), ``split`` (the
    batch crossed a split model's two halves), ``series`` (a number per actor and sweep point),
    and the categoricals ``worker``, ``sweep_point`` (``-`` outside a sweep), ``node`` (a display
    name, :func:`rayprof.summary.node_names`) and ``unit``. Workers and units are ordered as the
    run went: workers as ``worker_order`` lists them (then by name), a worker's sweep points as
    they ran."""
    b = batches(rows)
    b = b.assign(sweep_point=b["sweep_point"].fillna("-"))
    codes, keys = _groups(b, ["worker", "sweep_point"])
    keys["first"] = b.groupby(codes)["t_start"].min().to_numpy()
    sweep = keys["sweep_point"].nunique() > 1
    keys["unit"] = keys["worker"] + " · " + keys["sweep_point"] if sweep else keys["worker"]
    rank = {w: i for i, w in enumerate(worker_order)}
    order = keys.loc[sorted(keys.index, key=lambda i: (rank.get(keys.at[i, "worker"], len(rank)),
                                                       _natural(keys.at[i, "worker"]), keys.at[i, "first"]))]
    node_codes, nodes = _groups(b, ["node_ip", "node_id"])
    return b[["warmup", "t_start", "frames", *STAGE_COLUMNS]].assign(
        split=(b["role"] != "full").to_numpy(),
        overlap=(b["pipeline"] == "overlap").to_numpy(),
        series=_groups(b, ["actor_id", "sweep_point"])[0],
        worker=_categorical(codes, keys["worker"], order["worker"].unique()),
        sweep_point=_categorical(codes, keys["sweep_point"]),
        node=_categorical(node_codes, node_names(nodes)),
        unit=_categorical(codes, keys["unit"], order["unit"]))


def _natural(name: str) -> tuple:
    """A sort key that puts ``w2`` before ``w10``."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))


def is_sweep(b: pd.DataFrame) -> bool:
    """More than one sweep point among the rows of :func:`batch_rows`."""
    return b["sweep_point"].nunique() > 1


def _summarize(b: pd.DataFrame, key: str, stages: Sequence[str]) -> pd.DataFrame:
    """:func:`rayprof.metrics.summarize` over every row of ``b`` by the categorical ``key`` (rows
    in its category order, indexed by it), of the ``stages`` with values."""
    stages = [s for s in stages if b[f"{s}_ms"].notna().any()]
    cols = list(dict.fromkeys(["t_start", "frames", "total_ms", *(f"{s}_ms" for s in stages)]))
    slim = b[cols].assign(**{key: b[key].cat.remove_unused_categories()})
    return summarize(slim, by=[key], include_warmup=True, stages=stages).set_index(key)


def summary(b: pd.DataFrame, statuses: dict[str, str]) -> pd.DataFrame:
    """The summary table, one row per unit and stage (every row of ``b`` counted): worker,
    point, status, nodes, steps, frames, fps, stage (``metrics.BATCH_STAGES`` labels; ``e2e`` for
    a split's total), mean, p50, p90, p99 (ms)."""
    s = _summarize(b, "unit", list(BATCH_STAGES))
    units = b.groupby("unit", observed=True).agg(worker=("worker", "first"), point=("sweep_point", "first"),
                                                 split=("split", "any"))
    pairs = b.groupby(["unit", "node"], observed=True).size().reset_index()
    nodes = pairs.groupby("unit", observed=True)["node"].agg(lambda n: ", ".join(map(str, n)))
    out = []
    for unit, row in s.iterrows():
        u = units.loc[unit]
        for stage, label in BATCH_STAGES.items():
            if pd.notna(row.get(f"{stage}_mean")):
                if stage == "total":
                    label = "e2e" if u["split"] else "total"
                out.append({"worker": u["worker"], "point": u["point"], "status": statuses.get(u["worker"], "-"),
                            "nodes": nodes[unit], "steps": int(row["steps"]), "frames": int(row["frames"]),
                            "fps": row["fps"], "stage": label,
                            **{q: row[f"{stage}_{q}"] for q in ("mean", "p50", "p90", "p99")}})
    return pd.DataFrame(out)


def stage_breakdown(b: pd.DataFrame) -> pd.DataFrame:
    """Mean ms per unit (rows, in order) of each stage a batch's latency is made of (columns:
    ``COMPONENTS`` present in the run), plus ``total`` (the mean total/e2e latency). With
    ``pipeline: overlap`` a batch's latency is wait + exec: its read and prep ran ahead, beside
    the previous batch, so they are left out."""
    b = b.assign(read_ms=b["read_ms"].mask(b["overlap"]), prep_ms=b["prep_ms"].mask(b["overlap"]))
    means = b.groupby("unit", observed=True)[[f"{s}_ms" for s in [*COMPONENTS, "total"]]].mean()
    means.columns = [c.removesuffix("_ms") for c in means.columns]
    return means.dropna(axis=1, how="all").rename_axis(index=None)


def _end_ns(b: pd.DataFrame) -> pd.Series:
    """When each step ended (ns since the epoch)."""
    return b["t_start"].astype("int64") + (b["total_ms"].fillna(0.0) * 1e6).astype("int64")


def point_clock(b: pd.DataFrame) -> pd.DataFrame:
    """Per sweep point, in run order: its first step's ``start`` and the ``offset`` (s) at which it
    begins on the report's clock, which runs from the run's first step with the pauses between
    sweep points cut out (a small gap left), so every point gets room in proportion to its length."""
    spans = pd.DataFrame({"start": b["t_start"], "end": _end_ns(b)}).groupby(b["sweep_point"], observed=True).agg(
        start=("start", "min"), end=("end", "max")).sort_values("start")
    length = (spans["end"] - spans["start"].astype("int64")) / 1e9
    gap = 0.02 * length.sum()
    return spans[["start"]].assign(offset=(length + gap).cumsum().shift(fill_value=0.0)).rename(index=str)


def timeline(b: pd.DataFrame, max_points: int = TIMELINE_POINTS) -> pd.DataFrame:
    """Latency over time, in ``b``'s order: ``worker``, ``unit``, ``node``, ``series``, ``t_s``
    (seconds on :func:`point_clock`), ``total_ms`` and ``warmup``. Beyond ``max_points`` each
    series' measured steps are cut into bins and only each bin's fastest and slowest step are
    kept, so spikes survive the thinning; warm-up steps all stay."""
    pts = b[["worker", "unit", "node", "series", "sweep_point", "t_start", "total_ms", "warmup"]]
    if len(pts) > max_points:
        measured = pts[~pts["warmup"]]
        groups = measured.groupby("series")
        per = max(1, max_points // (2 * groups.ngroups))
        bins = groups.cumcount() * per // groups["t_start"].transform("size")
        by_bin = measured.groupby([measured["series"], bins])["total_ms"]
        keep = pd.Index(by_bin.idxmin()).union(pd.Index(by_bin.idxmax()))
        pts = pd.concat([pts[pts["warmup"]], measured.loc[keep]]).sort_index()
    clock = point_clock(b)
    point = pts["sweep_point"].astype(str)
    since = (pts["t_start"] - point.map(clock["start"])).dt.total_seconds()
    pts = pts.assign(t_s=since + point.map(clock["offset"]))
    return pts.drop(columns=["t_start", "sweep_point"]).reset_index(drop=True)


def latency_cdf(b: pd.DataFrame, points: int = CDF_POINTS) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per unit: (latency ms, fraction of batches at or below it), from 0 at the fastest batch to
    1. Up to ``points`` batches the empirical CDF itself (a step per batch); beyond, its value at
    ``points`` evenly spaced fractions."""
    out = {}
    for unit, v in b.groupby("unit", observed=True)["total_ms"]:
        v = np.sort(v.dropna().to_numpy(dtype=float))
        if v.size == 0:
            continue
        if v.size <= points:
            out[unit] = (np.r_[v[:1], v], np.arange(v.size + 1) / v.size)
        else:
            q = np.linspace(0.0, 1.0, points)
            out[unit] = (np.quantile(v, q), q)
    return out


def node_throughput(b: pd.DataFrame) -> pd.DataFrame:
    """Frames/s per node (rows; ``node · point`` in a sweep) and worker (columns): a worker's
    frames on the node over the node's wall-clock span, so a row adds up to the node's FPS."""
    codes, keys = _groups(b, ["node", "sweep_point"])
    keys["first"] = b.groupby(codes)["t_start"].min().to_numpy()
    keys["where"] = keys["node"].astype(str) + (" · " + keys["sweep_point"].astype(str) if is_sweep(b) else "")
    b = b.assign(where=_categorical(codes, keys["where"], keys.sort_values(["node", "first"])["where"]))
    fps = _summarize(b, "where", ["total"])
    frames = b.groupby(["where", "worker"], observed=True)["frames"].sum().unstack(fill_value=0)
    return frames.div(fps["frames"], axis=0).mul(fps["fps"], axis=0).rename_axis(index="node", columns="worker")


def parse_point(label: str) -> dict[str, str]:
    """``batch_size=8,replicas=2`` → {'batch_size': '8', 'replicas': '2'} (a value may hold ``/``)."""
    return dict(part.split("=", 1) if "=" in part else ("point", part) for part in label.split(","))


def sweep_table(b: pd.DataFrame) -> tuple[str, pd.DataFrame]:
    """The swept key (the first key whose value changes) and, per worker and sweep point in run
    order: ``series`` (the worker, plus the other keys that change), ``point``, ``x`` (the swept
    value: a number where every value is one), ``fps``, ``p50`` and ``p99`` of the total/e2e
    latency (ms; ``fps`` while every actor of the point ran, :func:`rayprof.metrics.concurrent_fps`),
    and ``efficiency`` where the key is replicas or nodes: fps(N) / (N/N0 ×
    fps(N0)) against the series' smallest N0 (the one-replica/one-node point when swept),
    else NaN."""
    s = _summarize(b, "unit", ["total"]).join(b.groupby("unit", observed=True).agg(
        worker=("worker", "first"), point=("sweep_point", "first")))
    # a point's throughput while all its actors ran (their start-up skew does not count)
    s["fps"] = b.groupby("unit", observed=True)[["t_start", "total_ms", "frames", "series"]].apply(
        lambda g: concurrent_fps(g.rename(columns={"series": "actor_id"})))
    began = b.groupby("sweep_point", observed=True)["t_start"].min().rename(index=str)
    s = s.assign(point=s["point"].astype(str))
    s = s.assign(began=s["point"].map(began)).sort_values("began", kind="stable")  # points as they ran
    values = pd.DataFrame([parse_point(p) for p in s["point"]], index=s.index)
    changing = [k for k in values.columns if values[k].nunique() > 1] or list(values.columns[:1])
    key, others = changing[0], changing[1:]
    numeric = pd.to_numeric(values[key], errors="coerce")
    worker = s["worker"].astype(str)
    series = worker.str.cat([k + "=" + values[k] for k in others], sep=" · ") if others else worker
    table = pd.DataFrame({"series": series, "point": s["point"],
                          "x": numeric if numeric.notna().all() else values[key], "fps": s["fps"],
                          "p50": s["total_p50"], "p99": s["total_p99"]}).reset_index(drop=True)
    table["efficiency"] = np.nan
    if key in SCALING_KEYS and numeric.notna().all():
        for _, g in table.groupby("series", sort=False):
            base = g.loc[g["x"].idxmin()]
            table.loc[g.index, "efficiency"] = g["fps"] / (g["x"] / base["x"] * base["fps"])
    return key, table


# --------------------------------------------------------------------------- drawing


def _figure(width: float, height: float, layout: str | None = "constrained"):
    """A figure on the Agg canvas: no pyplot, so no display and no global state."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout=layout)


def _colors(n: int) -> list:
    from matplotlib import colormaps

    if n <= 10:
        return [colormaps["tab10"](i) for i in range(n)]
    if n <= 20:
        return [colormaps["tab20"](i) for i in range(n)]
    return [colormaps["viridis"](i / (n - 1)) for i in range(n)]


def _legend_columns(width_in: float, labels: Sequence[str]) -> int:
    """Columns for a legend of ``labels`` across a figure ``width_in`` inches wide (at most five)."""
    return max(1, min(5, len(labels), int(width_in * 13) // (max(map(len, labels), default=1) + 8)))


def _legend_below(fig, handles: Sequence, labels: Sequence[str]) -> None:
    """The legend in rows below the plots, outside them."""
    where = "outside lower center" if fig.get_layout_engine() else "lower center"
    fig.legend(handles, labels, loc=where, ncols=_legend_columns(fig.get_figwidth(), labels), frameon=False)


def plot_stages(breakdown: pd.DataFrame):
    """Stacked horizontal bars: one per unit, one segment per stage, the mean total/e2e marked."""
    n = len(breakdown)
    fig = _figure(10, 1.6 + 0.4 * n)
    ax = fig.add_subplot()
    y, left = np.arange(n), np.zeros(n)
    stages = [c for c in breakdown.columns if c != "total"]
    for stage in stages:
        width = breakdown[stage].fillna(0.0).to_numpy()
        ax.barh(y, width, left=left, height=0.7, color=STAGE_COLORS[stage], label=BATCH_STAGES[stage])
        left += width
    total = breakdown["total"].to_numpy()
    mark = ax.scatter(total, y, marker="|", s=500, linewidths=2, color="black", zorder=3)
    for yi, t in zip(y, total):
        ax.annotate(f"{t:.1f} ms", (t, yi), xytext=(6, 0), textcoords="offset points", va="center", fontsize=9)
    ax.set_yticks(y, breakdown.index)
    ax.invert_yaxis()
    ax.set_xlim(0, max(np.nanmax(total), left.max()) * 1.18)
    ax.set_xlabel("mean time per batch (ms)")
    ax.set_title("Where the time goes: mean of each stage per batch")
    ax.grid(axis="x", alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    _legend_below(fig, [*handles, mark], [*labels, "total / e2e (mean)"])
    return fig


def plot_timeline(points: pd.DataFrame, steps: int, clock: pd.DataFrame | None = None):
    """One panel per worker: total/e2e latency of every batch against time, a line per actor
    coloured by its node, warm-up steps as crosses (a triangle on the top edge where one is more
    than the axis shows: each panel is scaled to its measured steps); with ``clock`` (a sweep), a
    numbered dotted line where each sweep point begins, the numbers explained in the legend."""
    workers = list(points["worker"].cat.remove_unused_categories().cat.categories)
    nodes = list(points["node"].cat.remove_unused_categories().cat.categories)
    color = dict(zip(nodes, _colors(len(nodes))))
    starts = clock["offset"] if clock is not None else pd.Series(dtype=float)
    points_key = [f"{i}: {point}" for i, point in enumerate(starts.index, 1)]
    legend = [f"node {n}" for n in nodes] + ["warm-up step above the axis"] * 2 + points_key  # the longest case
    thinned = len(points) < steps
    rows = -(-len(legend) // _legend_columns(11, legend))
    above, below = 0.55 + 0.2 * thinned, 0.6 + 0.22 * rows  # inches: the title; the x label and the legend
    height = above + below + 1.7 * len(workers)
    fig = _figure(11, height, layout=None)  # margins fixed: a constrained layout of many panels is slow
    fig.subplots_adjust(left=0.075, right=0.98, top=1 - above / height, bottom=below / height, hspace=0.3)
    axes = fig.subplots(len(workers), 1, sharex=True, squeeze=False)[:, 0]
    for ax, worker in zip(axes, workers):
        mine = points[points["worker"] == worker]
        measured, warm = mine[~mine["warmup"]], mine[mine["warmup"]]
        for (node, _), s in measured.groupby(["node", "series"], sort=False, observed=True):
            ax.plot(s["t_s"], s["total_ms"], lw=0.8, color=color[node], marker="." if len(s) < 200 else None,
                    ms=3, label=f"node {node}")
        top = 1.2 * (measured if len(measured) else warm)["total_ms"].max()
        over = warm["total_ms"] > top
        if (~over).any():
            ax.scatter(warm["t_s"][~over], warm["total_ms"][~over], marker="x", s=20, color="black", zorder=3,
                       label="warm-up step")
        if over.any():
            ax.scatter(warm["t_s"][over], np.full(over.sum(), 0.96 * top), marker="^", s=24, color="black",
                       zorder=3, label="warm-up step above the axis")
        for i, at in enumerate(starts, 1):
            ax.axvline(at, color="grey", ls=":", lw=1)
            ax.annotate(str(i), (at, 0), xycoords=("data", "axes fraction"), xytext=(3, 3),
                        textcoords="offset points", va="bottom", fontsize=9, fontweight="bold", color="dimgrey")
        ax.set_ylim(0, top)
        ax.set_title(worker, loc="left", fontsize=10)
        ax.grid(alpha=0.3)
    cut = " (pauses between sweep points cut out)" if clock is not None else ""
    axes[-1].set_xlabel(f"seconds since the run's first step{cut}")
    fig.supylabel(LATENCY)
    note = f"\n(thinned: {len(points):,} of {steps:,} steps drawn, each bin's fastest and slowest)" if thinned else ""
    fig.suptitle("Latency over time, every batch" + note, y=1 - 0.08 / height, va="top")
    handles: dict = {}
    for ax in axes:
        for h, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, h)
    labels = [f"node {n}" for n in nodes if f"node {n}" in handles] + \
        [w for w in ("warm-up step", "warm-up step above the axis") if w in handles]
    from matplotlib.lines import Line2D

    blank = Line2D([], [], linestyle="none")
    _legend_below(fig, [handles[label] for label in labels] + [blank] * len(points_key), labels + points_key)
    return fig


def _log_ms(axis) -> None:
    """A log scale marked 1, 2, 5, 10, 20, … in plain numbers."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.axes.set_xscale("log")
    axis.set_major_locator(LogLocator(subs=(1, 2, 5)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def plot_cdf(cdf: dict[str, tuple[np.ndarray, np.ndarray]]):
    """One CDF line per unit, with the p50, p90 and p99 levels marked; a log x axis where the
    latencies span more than 20×."""
    fig = _figure(10, 5.5)
    ax = fig.add_subplot()
    for (unit, (ms, frac)), c in zip(cdf.items(), _colors(len(cdf))):
        ax.step(ms, frac, where="post", color=c, lw=1.4, label=unit)
    lo, hi = min(ms[0] for ms, _ in cdf.values()), max(ms[-1] for ms, _ in cdf.values())
    if lo > 0 and hi / lo > 20:
        _log_ms(ax.xaxis)
    for q, name in ((0.5, "p50"), (0.9, "p90"), (0.99, "p99")):
        ax.axhline(q, color="grey", ls="--", lw=0.8)
        ax.annotate(name, (1, q), xycoords=("axes fraction", "data"), xytext=(3, 0), textcoords="offset points",
                    va="center", fontsize=8, color="dimgrey")
    ax.set_ylim(0, 1.01)
    ax.set_xlabel(LATENCY)
    ax.set_ylabel("fraction of batches at or below")
    ax.set_title("Latency CDF per worker: further left is faster, a long flat top is a slow tail")
    ax.grid(alpha=0.3)
    fig.legend(loc="outside right upper", frameon=False, fontsize=9 if len(cdf) > 8 else 10, ncols=1 + len(cdf) // 25)
    return fig


def plot_nodes(fps: pd.DataFrame):
    """Stacked horizontal bars: one per node, one segment per worker, the node's FPS written."""
    n = len(fps)
    fig = _figure(10, 1.6 + 0.45 * n)
    ax = fig.add_subplot()
    y, left = np.arange(n), np.zeros(n)
    for worker, c in zip(fps.columns, _colors(fps.shape[1])):
        ax.barh(y, fps[worker].to_numpy(), left=left, height=0.7, color=c, label=worker)
        left += fps[worker].to_numpy()
    for yi, t in zip(y, left):
        ax.annotate(f"{t:.1f} FPS", (t, yi), xytext=(6, 0), textcoords="offset points", va="center", fontsize=9)
    ax.set_yticks(y, fps.index)
    ax.invert_yaxis()
    ax.set_xlim(0, left.max() * 1.18)
    ax.set_xlabel("throughput (frames/s over the node's wall-clock span)")
    ax.set_title("Throughput per node, by worker")
    ax.grid(axis="x", alpha=0.3)
    _legend_below(fig, *ax.get_legend_handles_labels())
    return fig


def _x_positions(x: pd.Series) -> tuple[pd.Series, list | None]:
    """Numbers as they are; other values at 0, 1, … in run order (with their tick labels)."""
    if pd.api.types.is_numeric_dtype(x):
        return x, None
    labels = list(dict.fromkeys(x))
    return x.map({v: i for i, v in enumerate(labels)}), labels


def plot_sweep(key: str, table: pd.DataFrame):
    """Throughput and p99 against the swept value, one line per series, and the scaling
    efficiency beside them where the key counts replicas or nodes."""
    panels = [("fps", "throughput (frames/s)"), ("p99", "p99 " + LATENCY)]
    if table["efficiency"].notna().any():
        panels.append(("efficiency", "scaling efficiency (1 = linear)"))
    fig = _figure(5.0 * len(panels), 4.6)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    x, labels = _x_positions(table["x"])
    colors = _colors(table["series"].nunique())
    for ax, (col, ylabel) in zip(axes, panels):
        for (series, g), c in zip(table.groupby("series", sort=False), colors):
            ax.plot(x[g.index], g[col], marker="o", color=c, label=series)
        if col == "efficiency":
            ax.axhline(1.0, color="grey", ls="--", lw=1, label="linear scaling")
            ax.set_ylim(0, max(1.1, table["efficiency"].max() * 1.1))
        else:
            ax.set_ylim(bottom=0)
        if labels is not None:
            ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right")
        elif table["x"].nunique() <= 12:  # every swept value marked
            ax.set_xticks(sorted(set(table["x"])))
        ax.set_xlabel(key)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    fig.suptitle(f"Sweep over {key}: one point per sweep point")
    _legend_below(fig, *axes[-1].get_legend_handles_labels())
    return fig


def plot_latency_throughput(key: str, table: pd.DataFrame):
    """One point per sweep point: throughput (x) against p99 (solid) and p50 (dotted) latency,
    each labelled with its swept value."""
    fig = _figure(10, 5.5)
    ax = fig.add_subplot()
    for (series, g), c in zip(table.groupby("series", sort=False), _colors(table["series"].nunique())):
        ax.plot(g["fps"], g["p99"], marker="o", color=c, label=series)
        ax.plot(g["fps"], g["p50"], marker=".", ls=":", color=c)
        for _, r in g.iterrows():
            ax.annotate(f"{key}={r['x']}", (r["fps"], r["p99"]), xytext=(5, 5), textcoords="offset points", fontsize=8)
    ax.margins(0.15)
    ax.set_xlabel("throughput (frames/s)")
    ax.set_ylabel(LATENCY)
    ax.set_title("Latency against throughput (p99 solid, p50 dotted): down and to the right is better")
    ax.grid(alpha=0.3)
    fig.legend(loc="outside right upper", frameon=False)
    return fig


# --------------------------------------------------------------------------- the page

MEANINGS = [
    ("steps", "batches counted; warm-up steps are left out unless --include-warmup"),
    ("frames", "frames in the counted batches"),
    ("FPS", "frames ÷ the wall-clock span from the first counted step's start to the last one's end: "
            "replicas of a worker add up, idle gaps count against it"),
    ("read, prep, exec", "taking the batch from the source, preprocessing it, the model step (on CUDA: "
                         "until the device has finished)"),
    ("total", "one batch from its step's start to the end of exec"),
    ("exec (head), exec (tail)", "a split model's two halves"),
    ("wait (head), wait (tail)", "the head blocked because the tail is behind; the tail idle because the "
                                 "head is behind (not part of a batch's latency)"),
    ("transfer", "moving the activation between the halves (both sides)"),
    ("queue", "the batch waiting in the tail's inbox"),
    ("e2e", "a split batch end to end, from the head's step start to the tail's end"),
    ("mean, p50, p90, p99", "milliseconds per batch; percentiles interpolate linearly between order "
                            "statistics (numpy, DuckDB quantile_cont); a stable p99 takes about 1,000 steps"),
    ("status", "the worst final status among the worker's actors, from the manifest"),
    ("nodes", "where the worker's actors ran: the IP, plus the start of the Ray node id where nodes share an IP"),
    ("point", "in a sweep, the settings of the sweep point the batches ran at (key=value)"),
]

CSS = """body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1150px;color:#222;padding:0 16px}
h1{font-size:22px;margin-bottom:4px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:8px 0}td,th{padding:2px 10px;text-align:left;vertical-align:top}
th{background:#f3f3f3}td.n{text-align:right;font-variant-numeric:tabular-nums}
tr.first td{border-top:1px solid #ccc}table.facts td:first-child{color:#555}
figure{margin:12px 0}img{max-width:100%;border:1px solid #eee}figcaption{color:#444;max-width:900px}
dt{font-weight:600;float:left;clear:left;width:190px}dd{margin-left:200px}"""


def _cells(values: Sequence, numeric: Sequence[bool] | None = None, tag: str = "td") -> str:
    """Escaped table cells; ``numeric`` ones right-aligned."""
    numeric = numeric or [False] * len(values)
    return "".join(f'<{tag}{" class=n" if n else ""}>{html.escape(str(v))}</{tag}>' for v, n in zip(values, numeric))


def _table(header: Sequence[str] | None, rows: Sequence[Sequence], css: str = "") -> str:
    """An HTML table of text cells (no header row where ``header`` is None)."""
    head = f"<tr>{_cells(header, tag='th')}</tr>" if header else ""
    return f"<table class='{css}'>{head}" + "".join(f"<tr>{_cells(r)}</tr>" for r in rows) + "</table>"


def summary_html(table: pd.DataFrame, sweep: bool) -> str:
    """The summary as an HTML table: a unit's identity on its first stage's row."""
    ident = ["worker"] + (["point"] if sweep else []) + ["status", "nodes", "steps", "frames", "FPS"]
    header = ident + ["stage", "mean ms", "p50", "p90", "p99"]
    numeric = [h in ("steps", "frames", "FPS") for h in ident] + [False] + [True] * 4
    out, last = [f"<table><tr>{_cells(header, tag='th')}</tr>"], None
    for _, r in table.iterrows():
        first = (r["worker"], r["point"]) != last
        last = (r["worker"], r["point"])
        values = [r["worker"]] + ([r["point"]] if sweep else []) + [r["status"], r["nodes"], r["steps"], r["frames"],
                                                                      f"{r['fps']:.1f}"]
        values = (values if first else [""] * len(values)) + [r["stage"]] + [f"{r[q]:.2f}" for q in
                                                                           ("mean", "p50", "p90", "p99")]
        out.append(f"<tr{' class=first' if first else ''}>{_cells(values, numeric)}</tr>")
    return "".join(out) + "</table>"


def header_html(run_id: str, manifest: dict, rows: pd.DataFrame, include_warmup: bool) -> str:
    """The run's facts (the manifest's where it has one) and its nodes."""
    span = (_end_ns(rows).max() - rows["t_start"].min().value) / 1e9
    duration = manifest.get("duration_s")
    warm = int(rows["warmup"].sum())
    facts = [("run", run_id), ("name", manifest.get("run_name", "-")),
             ("status", manifest.get("status", "unknown (no manifest)")), ("started", manifest.get("started_at", "-")),
             ("duration", f"{duration:.1f} s" if duration is not None else "-"),
             ("steps span", f"{span:.1f} s from the first step's start to the last one's end"),
             ("rows", f"{len(rows):,} ({warm:,} warm-up, {'included' if include_warmup else 'left out'})"),
             ("launcher", manifest.get("launcher", "-")),
             ("dataset", manifest.get("dataset", {}).get("path", "-"))]
    nodes = [(n.get("ip") or "-", n.get("hostname", "-"), n.get("cpu_model", "-"), n.get("cores_available", "-"),
              n.get("memory_gib", "-"), ", ".join(g.get("name", "?") for g in n.get("gpus") or []) or "none")
             for n in manifest.get("nodes", {}).values()]
    out = [f"<h1>rayprof report: {html.escape(run_id)}</h1>",
           _table(None, facts, css="facts")]
    if nodes:
        out += ["<h2>Nodes</h2>", _table(["ip", "hostname", "CPU", "cores", "memory GiB", "GPUs"], nodes)]
    out += ["<h2>What the numbers mean</h2><dl>"] + [f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>"
                                                      for k, v in MEANINGS] + ["</dl>"]
    return "".join(out)


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


#: each plot's title on the page and how to read it
PLOTS = {
    "stages": ("Where the time goes", "Each bar is a worker's mean batch, cut into its stages in the order they "
               "happen; the black tick is the mean total (e2e for a split). A gap between the segments and the "
               "tick is time between stages. A worker with pipeline: overlap shows wait + exec: its read and prep "
               "ran ahead on the prefetch thread, beside the previous batch."),
    "timeline": ("Latency over time", "Every batch's latency against the time it started, one panel per worker, "
                 "one line per actor coloured by its node. Warm-up steps are black crosses (triangles on the top "
                 "edge where they are off the scale); hiccups show as spikes, drift as a slope. Over 20,000 "
                 "batches, each actor's are thinned to the fastest and slowest of short stretches, as the title "
                 "says."),
    "cdf": ("Latency CDF", "For each latency on the x axis, the fraction of batches that took at most that long. "
            "The dashed levels are p50, p90 and p99: where a line crosses one is that percentile. A steep line is "
            "a steady worker; a long flat top is a slow tail."),
    "nodes": ("Throughput per node", "Frames per second each node delivered over its wall-clock span, split by "
              "worker."),
    "sweep": ("Sweep", "Throughput and p99 latency at each sweep point, per worker, against the swept value. Where "
              "the value is a number of replicas or nodes, the scaling efficiency is fps(N) ÷ (N/N₀ × fps(N₀)), "
              "N₀ the smallest value swept: 1 is linear scaling."),
    "latency-throughput": ("Latency against throughput", "One point per sweep point: the best setting sits low "
                           "(fast) and to the right (many frames/s)."),
}


def figures(b: pd.DataFrame, measured: pd.DataFrame) -> dict:
    """The report's plots by name (:data:`PLOTS`): ``b`` every batch, ``measured`` the batches the
    statistics count; the sweep's two only in a sweep."""
    sweep = is_sweep(b)
    out = {"stages": plot_stages(stage_breakdown(measured)),
           "timeline": plot_timeline(timeline(b), len(b), point_clock(b) if sweep else None),
           "cdf": plot_cdf(latency_cdf(measured)),
           "nodes": plot_nodes(node_throughput(measured))}
    if sweep:
        key, table = sweep_table(measured)
        out.update({"sweep": plot_sweep(key, table), "latency-throughput": plot_latency_throughput(key, table)})
    return out


def output_path(out: str | Path) -> Path:
    """The page's path, as given: an ``.html`` name in a folder that exists."""
    path = Path(out).expanduser()
    if path.suffix.lower() not in (".html", ".htm") or path.is_dir():
        raise UserError("-o", str(out), "is not an .html file name", "name the page, e.g. -o report.html")
    if not path.parent.is_dir():
        raise UserError("-o", str(out), f"the folder {path.parent} does not exist", "create it, or name another")
    return path


def write_report(root: str | Path, run: str = "latest", out: str | Path = "report.html",
                 include_warmup: bool = False) -> list[Path]:
    """Write the report of ``run`` at ``root`` to ``out`` and its PNGs beside it
    (``<name>-<plot>.png``); returns the page's path, then the PNGs'."""
    page = output_path(out)
    run_id, manifest, rows = load_run(root, run)
    statuses = worker_statuses(manifest)
    b = batch_rows(rows, list(statuses))
    measured = b if include_warmup else b[~b["warmup"]]
    if measured.empty:
        raise UserError("--run", run_id, "has only warm-up steps so far", "add --include-warmup to report them")
    parts = [header_html(run_id, manifest, rows, include_warmup), "<h2>Summary</h2>",
             summary_html(summary(measured, statuses), is_sweep(b))]
    written = []
    for name, fig in figures(b, measured).items():
        title, caption = PLOTS[name]
        png = _png(fig)
        path = page.with_name(f"{page.stem}-{name}.png")
        _write(out, path, png)
        written.append(path)
        parts.append(f"<h2>{html.escape(title)}</h2><figure><img alt='{html.escape(title)}' "
                     f"src='data:image/png;base64,{base64.b64encode(png).decode()}'>"
                     f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    _write(out, page, (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>rayprof report · "
                       f"{html.escape(run_id)}</title><style>{CSS}</style></head><body>{''.join(parts)}</body></html>\n"
                       ).encode("utf-8"))
    return [page, *written]


def _write(out: str | Path, path: Path, data: bytes) -> None:
    """One file of the report; a folder that cannot take it is a mistake in ``-o``."""
    try:
        path.write_bytes(data)
    except OSError as e:
        raise UserError("-o", str(out), f"cannot write {path.name} there ({e.strerror or e})",
                        "choose a folder you may write to") from None
