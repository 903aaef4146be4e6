"""DuckDB over a rayprof dataset: two views, per-group summaries with a stability verdict,
stragglers, and SQL. No Ray and no torch: a laptop reads the dataset after the run.

    ds = open_dataset("runs/", run="latest")
    ds.summary(by=["worker", "node"])                            # pandas, one row per group
    ds.sql("SELECT node, median(exec_ms) FROM steps GROUP BY node").df()

Views
    ``steps``: every row: ``run_id`` and ``worker`` (from the folder names), the file's columns
    (:data:`rayprof.metrics.FILE_SCHEMA`; a column added after a file was written is NULL in it),
    and ``node``: a display name, the IP plus the first 8 characters of the Ray node id where
    several node ids share an IP (``summary.node_names``).

    ``batches``: one row per batch, end to end, as :func:`rayprof.metrics.batches` makes it. Full
    and split rows as they are. A split pair's head and tail rows (same ``run_id``, ``pair_id``,
    ``sweep_point``, ``step``) become one row with ``role = 'pair'``: identity, ``t_start``, read
    and prep from the head; frames, frame age and loss from the tail; ``head_ms``/``tail_ms`` the
    halves' compute, ``transfer_ms`` both sides of the move, ``head_wait_ms``, ``queue_ms``,
    ``tail_wait_ms``, and ``total_ms`` from the head's start to the tail's end (e2e). A head row
    without its tail row (a run cut short) is left out. ``tail_actor_id`` and ``tail_node`` say
    where the tail ran. The pair columns are NULL on other rows.

Reading
    Files are listed by :func:`rayprof.sink._listing`, which skips the hidden temp files of a run
    still being written. DuckDB's own Parquet reader scans a local root, one ``read_parquet`` per
    run (one rayprof writes a run, so its files share a schema, and no footer is read twice);
    that measured faster than DuckDB over a pyarrow dataset (``benchmarks/query_summary.py``),
    which reads the other roots (``s3://``…). The identity columns are constant per actor (one
    row buffer per actor), so a small read of each actor's first and last file tells its role,
    node, sweep point and time span without a scan of the rows.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs

from . import index, sink
from .errors import UserError, did_you_mean
from .metrics import FILE_SCHEMA, IDENTITY_FIELDS, PERCENTILES, STEP_FIELDS, _percentile_cols
from .source import mask_url

VIEWS = ("steps", "batches")
STAGES = ("read", "prep", "exec", "head", "head_wait", "transfer", "queue", "tail_wait", "tail", "wait", "total")
"""The ``batches`` view's stages (``<stage>_ms``) in the order a batch meets them; ``total`` is end to end."""
ROLES = ("full", "split", "pair")  # of batches
PEER_COLUMNS = ("run_id", "model", "mode", "role", "batch_size", "prep_level", "prep_device", "exec_device",
                "amp", "compiled", "sweep_point", "pipeline")
"""Actors that agree on these do the same work: stragglers are judged among them."""
STABILITY_PCT = 10.0  # perf_analyzer's default
STRAGGLER_PCT = 20.0
MAX_WINDOW, MIN_WINDOW = 100, 10  # steps per stability window (default: a third of each actor's steps)

_CANON = pa.schema([pa.field("run_id", pa.string()), pa.field("worker", pa.string()), *FILE_SCHEMA])
_PART = re.compile(r"^part-(?P<actor>.+)-\d+\.parquet$")
_HIVE = "hive_partitioning = true, hive_types = {'run': VARCHAR, 'worker': VARCHAR}"
_END_NS = "(epoch_ns(t_start) + CAST(total_ms * 1e6 AS BIGINT))"  # a batch's end (ns)
_QUANTILES = "[" + ", ".join(f"{p / 100:g}" for p in PERCENTILES) + "]"

_MEASURED = ["read_ms", "prep_ms", "exec_ms", "transfer_ms", "wait_ms", "total_ms"]
_PAIR_STEP = {  # a pair's batch row from its head row h and tail row t (default: the head's value)
    "exec_ms": "NULL::DOUBLE", "transfer_ms": "coalesce(h.transfer_ms, 0) + coalesce(t.transfer_ms, 0)",
    "wait_ms": "NULL::DOUBLE", "total_ms": "(epoch_ns(t.t_start) - epoch_ns(h.t_start)) / 1e6 + t.total_ms",
    "frames": "t.frames", "frame_age_ms": "t.frame_age_ms", "loss": "t.loss",
}
_PAIR_COLUMNS = {  # the columns only a pair has, and their type on other rows
    "head_ms": ("h.exec_ms", "DOUBLE"), "head_wait_ms": ("h.wait_ms", "DOUBLE"),
    # the batch in the tail's inbox: from the head's hand-off (ms after the tail began waiting) to the tail taking it
    "queue_ms": ("greatest(coalesce(t.wait_ms, 0)"
                 " - ((epoch_ns(h.t_start) - epoch_ns(t.t_start)) / 1e6 + h.total_ms), 0)", "DOUBLE"),
    "tail_wait_ms": ("t.wait_ms", "DOUBLE"), "tail_ms": ("t.exec_ms", "DOUBLE"),
    "tail_actor_id": ("t.actor_id", "VARCHAR"), "tail_node": ("t.node", "VARCHAR"),
}


def open_dataset(root: str | Path, run: str | None = None, *, reader: str = "auto", use_index: bool = True) -> Dataset:
    """The dataset at ``root`` (a folder or a URI): all of it (``run`` None or ``all``), one run
    by id (or the start of one), or ``latest`` (the run started last). ``reader``: ``auto``,
    ``duckdb`` (local roots only) or ``arrow``. ``use_index``: answer summaries from the runs'
    summary indexes where they are current (:mod:`rayprof.index`); False always scans the rows."""
    return Dataset(root, run, reader=reader, use_index=use_index)


class Dataset:
    """One DuckDB connection with the ``steps`` and ``batches`` views of the selected runs."""

    def __init__(self, root: str | Path, run: str | None = None, *, reader: str = "auto", use_index: bool = True):
        self.root = root
        self.fs, self.base = sink.open_root(root)
        self._manifests: dict[str, dict] = {}
        self._db = duckdb.connect()
        self._db.execute("SET TimeZone = 'UTC'; SET parquet_metadata_cache = true; SET enable_progress_bar = false")
        self._db.register("_empty", _CANON.empty_table())
        self._files: list[str] | None = None  # the views are made on first use: the index answers without them
        self.reader = _reader(reader, root, self.base)
        self.all_runs = _runs_at(self.fs, self.base, root)
        self.run_ids = self._select(run)
        infos = sink._listing(root, self.run_ids[0] if len(self.run_ids) == 1 else None)[2]
        by_run: dict[str, list[pafs.FileInfo]] = {}
        for i in infos:
            by_run.setdefault(_run_of(self.base, i.path), []).append(i)
        self._files = [i.path for r in self.run_ids for i in by_run.get(r, [])]
        self.indexes: dict[str, index.RunIndex] = {}
        """The selected runs' summary indexes that cover their files (:mod:`rayprof.index`)."""
        if use_index:
            found = {r: index.load(self.fs, self.base, r, by_run.get(r, [])) for r in self.run_ids}
            self.indexes = {r: ix for r, ix in found.items() if ix is not None}
        scanned = self._catalogue([i.path for r in self.run_ids if r not in self.indexes for i in by_run.get(r, [])])
        self.actors = pd.concat([scanned, *(ix.catalogue for ix in self.indexes.values())], ignore_index=True) \
            if self.indexes else scanned
        self.stages = _stages(self.actors)
        """The stages the selection measured (the others are NULL in every row)."""

    @property
    def con(self) -> duckdb.DuckDBPyConnection:
        """The DuckDB connection, with the views (made on first use)."""
        if self._files is not None:
            files, self._files = self._files, None
            self._create_views(files)
        return self._db

    # ------------------------------------------------------------------ the views

    def relation(self, name: str = "steps") -> duckdb.DuckDBPyRelation:
        """A view as a DuckDB relation (lazy: filter and aggregate it, then ``.df()``)."""
        if name not in VIEWS:
            raise UserError("view", name, "is not a view of the dataset", f"use {' or '.join(VIEWS)}")
        return self.con.view(name)

    def df(self, name: str = "steps") -> pd.DataFrame:
        """A whole view as a pandas DataFrame (for small selections; aggregate large ones in SQL)."""
        return self.relation(name).df()

    def sql(self, query: str) -> duckdb.DuckDBPyRelation:
        """DuckDB SQL over the views; a mistake in it is a :class:`UserError` with DuckDB's message."""
        with sql_errors(query):
            return self.con.sql(query)

    def columns(self, name: str = "steps") -> list[str]:
        """The view's column names."""
        return self.relation(name).columns

    # ------------------------------------------------------------------ answers

    def runs(self) -> pd.DataFrame:
        """One row per selected run, oldest first: run_id, name, started (UTC), duration_s,
        status (from the manifest; ``-`` without one), workers (planned), nodes (that wrote
        rows; the cluster's before any did), steps (rows written). A run without a manifest or
        still running takes what it lacks from its rows."""
        steps = dict(self.con.execute("SELECT run_id, count(*) FROM steps GROUP BY run_id").fetchall())
        rows = []
        for run_id in self.run_ids:
            m, cat = self._manifest(run_id), self.actors[self.actors["run_id"] == run_id]
            start = started_ns(m)
            if start is None and len(cat):
                start = int(cat["t0"].min())
            duration = m.get("duration_s")
            if duration is None and len(cat):  # running, or no manifest: as far as the rows go
                duration = (cat["t1"].max() - start) / 1e9
            planned = {a.get("plan", {}).get("worker") for a in m.get("actors", {}).values()}
            rows.append({"run_id": run_id, "name": m.get("run_name") or "-", "started": start, "duration_s": duration,
                         "status": m.get("status") or "-", "workers": len(planned) or cat["worker"].nunique(),
                         "nodes": cat["node_id"].nunique() or len(m.get("nodes") or {}),
                         "steps": steps.get(run_id, 0)})
        out = pd.DataFrame(rows, columns=["run_id", "name", "started", "duration_s", "status", "workers", "nodes",
                                          "steps"])
        out["started"] = pd.to_datetime(out["started"], unit="ns", utc=True)
        return out.sort_values("started", kind="stable", na_position="first").reset_index(drop=True)

    def default_by(self) -> list[str]:
        """``worker``, after ``run_id`` where several runs are selected and ``sweep_point`` where
        the selection has several sweep points."""
        return [c for c in ("run_id", "sweep_point") if self.actors[c].nunique(dropna=False) > 1] + ["worker"]

    def summary(self, by: Sequence[str] | None = None, include_warmup: bool = False, window: int | None = None,
                stability_pct: float = STABILITY_PCT) -> pd.DataFrame:
        """Per group of the ``batches`` view (``by``, default :meth:`default_by`): ``roles``
        (of its batches: full, split, pair), ``steps``, ``frames``, ``fps`` (frames over the
        group's wall-clock span, first batch start to last batch end), ``<stage>_mean`` and
        ``_p50``…``_p999`` (ms, linear interpolation) of every stage in :data:`STAGES` (NULL
        where the selection has none), and the stability verdict in perf_analyzer's manner: the
        last three windows of ``window`` steps of every actor (default: a third of its steps, at
        most 100) agree on throughput (the actors' rates added up) and on p99 of ``total_ms``
        within ``stability_pct`` percent (max/min) → ``stable``, else ``unstable``; ``short``
        where no actor of the group has enough steps for three windows (30 by default).
        ``window_steps``, ``fps_spread_pct`` and ``p99_spread_pct`` give the numbers."""
        by = self._by(by)
        if window is not None and window < 1:
            raise UserError("--window", window, "must be 1 step or more", "give steps per window, e.g. --window 50")
        if not stability_pct > 0:
            raise UserError("--stability-pct", stability_pct, "must be above 0", "give a percentage, e.g. 10")
        indexed = self._indexed_summary(by, include_warmup, window, stability_pct)
        if indexed is not None:
            return indexed
        keys, where = ", ".join(map(_q, by)), "" if include_warmup else "WHERE NOT warmup"
        stats = ", ".join(f"avg({s}_ms) AS {s}_mean, quantile_cont({s}_ms, {_QUANTILES}) AS {s}_q" for s in self.stages)
        roles = "concat_ws(',', " + ", ".join(f"CASE WHEN bool_or(role = '{r}') THEN '{r}' END" for r in ROLES) + ")"
        self.con.execute(f"""CREATE OR REPLACE TEMP TABLE _g AS
            SELECT {keys}, {roles} AS roles, count(*) AS steps, CAST(sum(frames) AS BIGINT) AS frames,
                   min(epoch_ns(t_start)) AS _t0, max({_END_NS}) AS _t1, {stats}
            FROM batches {where} GROUP BY ALL""")
        self._windows(by, include_warmup, window)
        stage_cols = ", ".join(
            (f"{s}_mean, " + ", ".join(f"{s}_q[{i + 1}] AS {c}" for i, c in enumerate(_percentile_cols(s)[1:])))
            if s in self.stages else ", ".join(f"NULL::DOUBLE AS {c}" for c in _percentile_cols(s)) for s in STAGES)
        g_keys = ", ".join(f"g.{_q(c)}" for c in by)
        # sweep points in the order they ran, not by name
        order = ", ".join("min(g._t0) OVER (PARTITION BY g.sweep_point)" if c == "sweep_point" else f"g.{_q(c)}"
                          for c in by)
        return self.con.sql(f"""
            SELECT {g_keys}, roles, steps, frames, frames / NULLIF((_t1 - _t0) / 1e9, 0) AS fps, {stage_cols},
                   CASE WHEN w IS NULL THEN 'short'
                        WHEN windows = 3 AND fps_spread <= {stability_pct}
                             AND p99_spread <= {stability_pct} THEN 'stable'
                        ELSE 'unstable' END AS stability,
                   w AS window_steps, fps_spread AS fps_spread_pct, p99_spread AS p99_spread_pct
            FROM _g AS g LEFT JOIN (
                SELECT {keys}, count(*) AS windows, min(w) AS w, (max(fps) / min(fps) - 1) * 100 AS fps_spread,
                       (max(p99) / min(p99) - 1) * 100 AS p99_spread
                FROM (SELECT {keys}, k, min(w) AS w, max(p99) FILTER (WHERE _actors) AS p99,
                             sum(f / ((t1 - t0) / 1e9)) FILTER (WHERE NOT _actors) AS fps
                      FROM _win GROUP BY ALL)
                GROUP BY ALL
            ) AS s ON {_same(by, "g", "s")}
            ORDER BY {order}""").df()

    def _windows(self, by: list[str], include_warmup: bool, window: int | None) -> None:
        """Temp table ``_win``: the last three windows of ``w`` steps of each actor (window k:
        steps ``last - (k+1)·w < step <= last - k·w``), per (group, actor, k): frames and span,
        and per (group, k) over all its actors (``_actors``): p99 of ``total_ms``. Per actor,
        so that replicas which start or finish at different times do not look unstable. The
        lowest step any window needs is a constant filter, so the scan skips what lies before."""
        actors = _window_actors(self.actors, window, include_warmup)
        self.con.register("_wa", actors)
        cutoff = int((actors["s1"] - 3 * actors["w"]).min()) if len(actors) else 0
        b_keys = ", ".join(f"b.{_q(c)}" for c in by)
        self.con.execute(f"""CREATE OR REPLACE TEMP TABLE _win AS
            SELECT {", ".join(map(_q, by))}, k, GROUPING(_actor) = 1 AS _actors, min(w) AS w, sum(frames) AS f,
                   min(epoch_ns(t_start)) AS t0, max({_END_NS}) AS t1, quantile_cont(total_ms, 0.99) AS p99
            FROM (SELECT {b_keys}, b.actor_id AS _actor, (a.s1 - b.step) // a.w AS k, a.w, b.frames, b.t_start,
                         b.total_ms
                  FROM batches AS b JOIN _wa AS a ON b.run_id = a.run_id AND b.actor_id = a.actor_id
                  WHERE b.step > {cutoff} AND b.step > a.s1 - 3 * a.w {"" if include_warmup else "AND NOT b.warmup"})
            GROUP BY GROUPING SETS (({", ".join(map(_q, by))}, _actor, k), ({", ".join(map(_q, by))}, k))""")

    def sweep(self) -> pd.DataFrame | None:
        """Per sweep point of the one selected run, in the order they ran: steps, frames, fps
        (while every actor of the point ran), e2e p50/p99 and the strong, weak and replica
        scaling efficiencies (:func:`rayprof.summary.sweep_summary`, what a sweep prints when it
        ends; warm-up excluded). None unless one run with several sweep points is selected."""
        from .summary import sweep_summary

        if len(self.run_ids) != 1 or self.actors["sweep_point"].nunique() < 2:
            return None
        return sweep_summary(self.df("steps"))

    def stragglers(self, include_warmup: bool = False, threshold_pct: float = STRAGGLER_PCT) -> pd.DataFrame:
        """Actors and nodes whose median batch time (``total_ms`` of ``batches``) is more than
        ``threshold_pct`` percent above their peers' (the other actors doing the same work: the
        same :data:`PEER_COLUMNS`), each named with the stage whose median grew most. A node is
        named instead of its actors where every peer actor on it is a straggler. Columns:
        run_id, kind (node or actor), name, workers, actors, steps, median_ms, peers_ms,
        slower_pct, stage, stage_ms, peers_stage_ms."""
        if not threshold_pct > 0:
            raise UserError("--straggler-pct", threshold_pct, "must be above 0", "give a percentage, e.g. 20")
        columns = ["run_id", "kind", "name", "workers", "actors", "steps", "median_ms", "peers_ms", "slower_pct",
                   "stage", "stage_ms", "peers_stage_ms"]
        batch_actors = self.actors[self.actors["role"] != "tail"]  # a pair's batches carry its head's identity
        if batch_actors.empty or batch_actors.groupby(list(PEER_COLUMNS), dropna=False).size().max() < 2:
            return pd.DataFrame(columns=columns)  # nobody to compare with: no need to read the rows
        actors = self._indexed_medians(include_warmup)
        if actors is None:
            medians = ", ".join(f"median({s}_ms) AS {s}" for s in self.stages)
            actors = self.con.sql(f"""SELECT {", ".join(PEER_COLUMNS)}, worker, actor_id, node, count(*) AS steps,
                {medians} FROM batches {"" if include_warmup else "WHERE NOT warmup"} GROUP BY ALL""").df()
        found = [row for _, peers in actors.groupby(list(PEER_COLUMNS), dropna=False, sort=True)
                 for row in _slow_units(peers, [s for s in self.stages if s != "total"], threshold_pct)]
        return pd.DataFrame(found, columns=columns)

    # ------------------------------------------------------------------ from the summary index

    def _index_rows(self, include_warmup: bool) -> pd.DataFrame | None:
        """The indexes' rows (one per batch actor and warm-up flag; warm-up rows only if asked),
        with ``node`` and ``tail_node`` named as the ``batches`` view names them, and the index's
        ``_run``; None unless every selected run has an index."""
        if set(self.indexes) != set(self.run_ids):
            return None
        rows = pd.concat([ix.batches.assign(_run=r) for r, ix in self.indexes.items()], ignore_index=True)
        if not include_warmup:
            rows = rows[~rows["warmup"]].reset_index(drop=True)
        from .summary import node_names

        a, names = self.actors, node_names(self.actors)
        node_of = dict(zip(zip(a["node_ip"], a["node_id"]), names))
        rows["node"] = [node_of[k] for k in zip(rows["node_ip"], rows["node_id"])]
        actor_node = dict(zip(zip(a["run_id"], a["actor_id"]), names))
        rows["tail_node"] = [actor_node.get(k) for k in zip(rows["run_id"], rows["tail_actor_id"])]
        return rows

    def _stage_values(self, rows: pd.DataFrame, stage: str) -> list:
        """The sorted ``stage`` values of each of ``rows`` (views into the indexes' arrays)."""
        if f"{stage}_n" not in rows:
            return []
        return [self.indexes[r].values[stage][int(o):int(o) + int(n)]
                for r, o, n in zip(rows["_run"], rows[f"{stage}_off"], rows[f"{stage}_n"]) if n > 0]

    def _indexed_summary(self, by: list[str], include_warmup: bool, window: int | None,
                         stability_pct: float) -> pd.DataFrame | None:
        """:meth:`summary` from the indexes: the same columns and numbers without a scan of the
        rows. None (scan instead) unless every run has an index, ``by`` names columns constant per
        actor, and the stability windows lie within the batches each index keeps."""
        if window is not None and 3 * window > index.TAIL_STEPS or not set(by) <= {*index.KEY_COLUMNS, "node"}:
            return None
        rows = self._index_rows(include_warmup)
        if rows is None:
            return None
        columns = [*by, "roles", "steps", "frames", "fps", *(c for s in STAGES for c in _percentile_cols(s)),
                   "stability", "window_steps", "fps_spread_pct", "p99_spread_pct"]
        if rows.empty:
            return pd.DataFrame(columns=columns)
        windows = self._indexed_windows(rows, by, include_warmup, window)
        if windows is None:
            return None
        out = []
        for key, g in rows.groupby(by, dropna=False, sort=False):
            row = dict(zip(by, key))
            row.update(roles=",".join(r for r in ROLES if (g["role"] == r).any()), steps=int(g["n"].sum()),
                       frames=int(g["frames"].sum()), _t0=g["t0"].min(), _t1=g["t1"].max())
            span = (row["_t1"] - row["_t0"]) / 1e9
            row["fps"] = row["frames"] / span if span else np.nan
            for s in STAGES:
                names, values = _percentile_cols(s), self._stage_values(g, s) if s in self.stages else []
                n = g[f"{s}_n"].sum() if values else 0
                stats = [g[f"{s}_sum"].sum() / n if n else np.nan, *index.quantiles(values, [p / 100 for p in PERCENTILES])]
                row.update(zip(names, stats))
            out.append(row)
        g = pd.DataFrame(out)
        g = g.merge(windows, on=by, how="left") if len(windows) else g.assign(windows=np.nan, w=np.nan,
                                                                               fps_spread=np.nan, p99_spread=np.nan)
        stable = (g["windows"] == 3) & (g["fps_spread"] <= stability_pct) & (g["p99_spread"] <= stability_pct)
        g["stability"] = np.where(g["w"].isna(), "short", np.where(stable, "stable", "unstable"))
        g = g.rename(columns={"w": "window_steps", "fps_spread": "fps_spread_pct", "p99_spread": "p99_spread_pct"})
        order = g[by].copy()
        if "sweep_point" in by:  # sweep points in the order they ran, not by name
            order["sweep_point"] = g.groupby("sweep_point", dropna=False)["_t0"].transform("min")
        g = g.iloc[order.sort_values(by, kind="stable", na_position="last").index]
        return g[columns].reset_index(drop=True)

    def _indexed_windows(self, rows: pd.DataFrame, by: list[str], include_warmup: bool,
                         window: int | None) -> pd.DataFrame | None:
        """Per group of ``by``: windows (how many), w, fps_spread and p99_spread of the last
        three windows, as :meth:`_windows` and :meth:`summary` compute them, from the indexes'
        last batches; None where a window reaches before them."""
        actors = _window_actors(self.actors, window, include_warmup)
        tails = pd.concat([ix.tail.assign(run_id=r) for r, ix in self.indexes.items()], ignore_index=True)
        first = tails.groupby(["run_id", "actor_id"])["step"].min().rename("kept_from")
        ends = rows.groupby(["run_id", "actor_id"])["s_max"].max()
        actors = actors.join(first, on=["run_id", "actor_id"]).join(ends, on=["run_id", "actor_id"])
        if ((actors["s1"] - 3 * actors["w"] + 1 < actors["kept_from"]) & (actors["s_max"] > index.TAIL_STEPS)).any():
            return None
        keys = rows[["run_id", "actor_id", *[c for c in by if c not in ("run_id", "actor_id")]]].drop_duplicates()
        b = tails.merge(actors[["run_id", "actor_id", "s1", "w"]], on=["run_id", "actor_id"])
        b = b[(b["step"] > b["s1"] - 3 * b["w"]) & (include_warmup or ~b["warmup"])]
        b = b.merge(keys, on=["run_id", "actor_id"]).assign(k=lambda d: (d["s1"] - d["step"]) // d["w"])
        if b.empty:
            return pd.DataFrame(columns=[*by, "windows", "w", "fps_spread", "p99_spread"])
        per_actor = b.groupby([*by, "actor_id", "k"], dropna=False).agg(f=("frames", "sum"), t0=("t0", "min"),
                                                                           t1=("t1", "max"))
        per_actor["fps"] = per_actor["f"] / ((per_actor["t1"] - per_actor["t0"]) / 1e9)
        per_k = b.groupby([*by, "k"], dropna=False).agg(w=("w", "min"))
        per_k["p99"] = b.groupby([*by, "k"], dropna=False)["total_ms"].quantile(0.99)
        per_k["fps"] = per_actor.groupby([*by, "k"], dropna=False)["fps"].sum()
        out = per_k.groupby(by, dropna=False).agg(windows=("w", "size"), w=("w", "min"), fps_max=("fps", "max"),
                                                  fps_min=("fps", "min"), p99_max=("p99", "max"), p99_min=("p99", "min"))
        out["fps_spread"] = (out["fps_max"] / out["fps_min"] - 1) * 100
        out["p99_spread"] = (out["p99_max"] / out["p99_min"] - 1) * 100
        return out.reset_index()[[*by, "windows", "w", "fps_spread", "p99_spread"]]

    def _indexed_medians(self, include_warmup: bool) -> pd.DataFrame | None:
        """Per batch actor from the indexes: :data:`PEER_COLUMNS`, worker, actor_id, node, steps and
        the median of every stage (what :meth:`stragglers` compares); None without indexes."""
        rows = self._index_rows(include_warmup)
        if rows is None:
            return None
        out = []
        for _, g in rows.groupby(["run_id", "actor_id"], sort=True):
            row = g.iloc[0][[*PEER_COLUMNS, "worker", "actor_id", "node"]].to_dict()
            row["steps"] = int(g["n"].sum())
            row.update({s: index.quantiles(self._stage_values(g, s), [0.5])[0] for s in self.stages})
            out.append(row)
        return pd.DataFrame(out, columns=[*PEER_COLUMNS, "worker", "actor_id", "node", "steps", *self.stages])

    # ------------------------------------------------------------------ building

    def _by(self, by: Sequence[str] | None) -> list[str]:
        if by is None:
            return self.default_by()
        by, known = [c.strip() for c in by if c.strip()], _steps_columns()
        if not by:
            raise UserError("--by", "", "names no column", f"use columns of the steps view: {', '.join(known)}")
        for c in by:
            if c not in known:
                raise UserError("--by", c, f"is not a column of the steps view{did_you_mean(c, known)}",
                                f"use one of {', '.join(known)}")
        return list(dict.fromkeys(by))

    def _manifest(self, run_id: str) -> dict:
        """The run's manifest; ``{}`` where it has none (yet)."""
        if run_id not in self._manifests:
            self._manifests[run_id] = manifest_of(self.root, run_id)
        return self._manifests[run_id]

    def _start(self, run_id: str) -> int | None:
        """When the run started (ns): the manifest says, else its first row (its actors' first
        files); None without either."""
        started = started_ns(self._manifest(run_id))
        if started is not None:
            return started
        t0 = self._catalogue(sink.dataset_files(self.root, run_id))["t0"].min()
        return None if pd.isna(t0) else int(t0)

    def _select(self, run: str | None) -> list[str]:
        return pick_runs(self.root, self.all_runs, run, self._start)

    def _catalogue(self, files: list[str]) -> pd.DataFrame:
        """One row per actor from its first and last file: its identity (worker, actor_id,
        pair_id, node_ip, node_id, :data:`PEER_COLUMNS`), t0 (first start, ns), t1 (last end, ns), s0 and s1
        (first and last step), warm (warm-up rows seen: they come first), and for each stage
        column whether it holds values (an actor measures a stage in every step or never)."""
        ends: dict[tuple[str, str], list[str]] = {}
        for f in files:  # sorted: an actor's files follow each other, in sequence order
            folder, name = posixpath.split(f)
            m = _PART.match(name)
            ends.setdefault((folder, m.group("actor") if m else name), [f, f])[1] = f
        picked = sorted({f for first_last in ends.values() for f in first_last})
        ident = dict.fromkeys(["worker", "actor_id", "pair_id", "node_ip", "node_id", *PEER_COLUMNS])
        return self._db.sql(f"""
            SELECT {", ".join(ident)}, min(epoch_ns(t_start)) AS t0, max({_END_NS}) AS t1, min(step) AS s0,
                   max(step) AS s1, count(*) FILTER (WHERE warmup) AS warm,
                   {", ".join(f"bool_or({c} IS NOT NULL) AS {c}" for c in _MEASURED)}
            FROM ({self._scan("ends", picked)}) GROUP BY ALL ORDER BY ALL""").df()

    def _create_views(self, files: list[str]) -> None:
        """``steps``: the files of full/split actors (``_full``), heads (``_head``) and tails
        (``_tail``), each scanned once; ``batches``: ``_full`` and the pairs joined."""
        roles = {(a.run_id, a.worker, a.actor_id): a.role for a in self.actors.itertuples()}
        parts: dict[str, list[str]] = {"full": [], "head": [], "tail": []}
        for f in files:
            role = roles.get(_actor_key(self.base, f), "full")
            parts[role if role in ("head", "tail") else "full"].append(f)
        node = _node_sql(self.actors)
        cols = ", ".join(f"{node} AS node" if c == "node" else _q(c) for c in _steps_columns())
        present = [p for p, part_files in parts.items() if p == "full" or part_files]
        for part in present:
            self._db.execute(f"CREATE OR REPLACE VIEW _{part} AS SELECT {cols} FROM ({self._scan(part, parts[part])})")
        union = " UNION ALL ".join(f"SELECT * FROM _{p}" for p in present)
        self._db.execute(f"CREATE OR REPLACE VIEW steps AS {union}")
        none = ", ".join(f"NULL::{kind} AS {name}" for name, (_, kind) in _PAIR_COLUMNS.items())
        pairs = f" UNION ALL BY NAME {_pair_sql()}" if parts["head"] and parts["tail"] else ""
        self._db.execute(f"CREATE OR REPLACE VIEW batches AS SELECT *, {none} FROM _full{pairs}")

    def _scan(self, name: str, files: list[str]) -> str:
        """SQL for the rows of ``files``: every column of today's schema (NULL where a file lacks it)."""
        if not files:
            return "SELECT * FROM _empty"
        if self.reader == "arrow":
            self._db.register(f"_arrow_{name}", sink.files_dataset(self.fs, self.base, files))
            scans = [f"SELECT * RENAME (run AS run_id) FROM _arrow_{name}"]
        else:
            by_run: dict[str, list[str]] = {}
            for f in files:
                by_run.setdefault(_run_of(self.base, f), []).append(f)
            scans = [f"SELECT * RENAME (run AS run_id) FROM read_parquet([{', '.join(map(_lit, run_files))}], {_HIVE})"
                     for run_files in by_run.values()]
        return " UNION ALL BY NAME ".join(["SELECT * FROM _empty", *scans])


# --------------------------------------------------------------------------- helpers


def run_list(root: str | Path) -> list[str]:
    """The run ids at ``root``; a missing or empty root is a :class:`UserError`."""
    return _runs_at(*sink.open_root(root), root)


def pick_runs(root: str | Path, runs: list[str], run: str | None, started: Callable[[str], int | None],
              one: bool = False) -> list[str]:
    """The runs among ``runs`` (those at ``root``) that ``run`` names: all (None or ``all``, unless
    ``one``), the one started last (``latest``, by ``started(run_id)`` in ns), or one by id or the
    start of one (``run=`` allowed). A name that fits none or several is a :class:`UserError`."""
    choices = "latest" if one else "latest, all"
    if run in (None, "all") and one:
        raise UserError("--run", run, "names several runs where one is wanted", "give a run id, or latest")
    if run in (None, "all"):
        return runs
    if run == "latest":
        return [max(runs, key=lambda r: (started(r) or 0, r))]
    run = run.removeprefix("run=")
    matches = [run] if run in runs else [r for r in runs if r.startswith(run)]
    if len(matches) > 1:
        raise UserError("--run", run, f"is the start of several runs ({', '.join(matches)})", "give more of the id")
    if not matches:
        where = f"{mask_url(str(root))}{did_you_mean(run, runs)}"
        raise UserError("--run", run, f"is not a run in {where}", f"use {choices} or one of: {', '.join(runs)}")
    return matches


def manifest_of(root: str | Path, run_id: str) -> dict:
    """The run's manifest; ``{}`` where it has none (yet)."""
    try:
        return sink.read_manifest(root, run_id)
    except (OSError, ValueError):
        return {}


def started_ns(manifest: dict) -> int | None:
    """When the manifest says its run started (ns since the epoch); None without a manifest."""
    started = manifest.get("started_at")
    return int(datetime.fromisoformat(started).timestamp() * 1e9) if started else None



@contextmanager
def sql_errors(query: str) -> Iterator[None]:
    """A DuckDB error in the user's SQL → a one-line :class:`UserError` with DuckDB's message."""
    try:
        yield
    except duckdb.Error as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        message = " ".join(line for line in lines if not line.startswith("LINE "))[:300]
        raise UserError("--sql", query, message or type(e).__name__,
                        'query the views steps and batches (--sql "DESCRIBE steps" lists the columns)') from None


def _steps_columns() -> list[str]:
    """The ``steps`` view's columns: the files' (with the partition columns) and ``node`` before ``node_id``."""
    return [c for name in _CANON.names for c in (("node", name) if name == "node_id" else (name,))]


def _pair_sql() -> str:
    """One ``batches`` row per pair batch: the head row ``h`` joined with its tail row ``t``."""
    cols = ["h.run_id", "h.worker", "h.node"]
    cols += ["'pair' AS role" if f.name == "role" else f"h.{f.name}" for f in IDENTITY_FIELDS]
    cols += [f"{_PAIR_STEP.get(f.name, f'h.{f.name}')} AS {f.name}" for f in STEP_FIELDS]
    cols += [f"{sql} AS {name}" for name, (sql, _) in _PAIR_COLUMNS.items()]
    return (f"SELECT {', '.join(cols)} FROM _head AS h JOIN _tail AS t ON h.run_id = t.run_id"
            " AND h.pair_id = t.pair_id AND h.step = t.step AND h.sweep_point IS NOT DISTINCT FROM t.sweep_point")


def _stages(actors: pd.DataFrame) -> list[str]:
    """The :data:`STAGES` that hold values in ``batches``, from the actors' catalogue."""
    whole = actors[~actors["role"].isin(["head", "tail"])]
    found = {c.removesuffix("_ms") for c in _MEASURED if whole[c].any()}
    if (actors["role"] == "head").any() and (actors["role"] == "tail").any():
        heads = actors[actors["role"] == "head"]
        found |= {c.removesuffix("_ms") for c in ("read_ms", "prep_ms") if heads[c].any()}
        found |= {"head", "head_wait", "transfer", "queue", "tail_wait", "tail", "total"}
    return [s for s in STAGES if s in found]


def _window_actors(actors: pd.DataFrame, window: int | None, include_warmup: bool) -> pd.DataFrame:
    """Per actor with enough steps for three windows: run_id, actor_id (a pair: its head's), s1
    (the last step of its batches: a pair's tail may stop before its head) and w (steps per window)."""
    role = actors["role"]
    tails = actors.loc[role == "tail", ["run_id", "pair_id", "sweep_point", "s1"]]
    heads = actors[role == "head"].merge(tails, on=["run_id", "pair_id", "sweep_point"], suffixes=("", "_tail"))
    heads = heads.assign(s1=heads[["s1", "s1_tail"]].min(axis=1))
    out = pd.concat([actors[~role.isin(["head", "tail"])], heads])
    n = out["s1"] - out["s0"] + 1 - (0 if include_warmup else out["warm"])
    w = n // 3 if window is None else pd.Series(window, index=out.index)
    if window is None:
        w = w.clip(upper=MAX_WINDOW).where(w >= MIN_WINDOW)
    out = out.assign(w=w)[w.notna() & (n >= 3 * w)]
    return out[["run_id", "actor_id", "s1", "w"]].astype({"s1": "int64", "w": "int64"}).reset_index(drop=True)


def _runs_at(fs: pafs.FileSystem, base: str, root: str | Path) -> list[str]:
    """The run ids at the root (``run=<id>`` folders), sorted; a missing or empty root is the user's mistake."""
    shown = mask_url(str(root))
    try:
        runs = sink.run_folders(fs, base)
    except FileNotFoundError:
        raise UserError("ROOT", shown, "does not exist", "give the folder a run wrote to (the spec's output)") from None
    except OSError as e:
        raise UserError("ROOT", shown, f"cannot be listed ({str(e).splitlines()[0]})",
                        "give the folder a run wrote to (the spec's output)") from None
    if not runs:
        raise UserError("ROOT", shown, "holds no rayprof runs (no run=<id> folders)",
                        "give the folder a run wrote to (the spec's output)")
    return runs


def _reader(reader: str, root: str | Path, base: str) -> str:
    """``duckdb`` (DuckDB's Parquet reader) for a local root, else ``arrow`` (a pyarrow dataset)."""
    if reader not in ("auto", "duckdb", "arrow"):
        raise UserError("reader", reader, "is not a reader", "use auto, duckdb or arrow")
    local = not sink.is_remote(root) and not any(c in base for c in "*?[{")  # DuckDB would expand them as globs
    if reader == "duckdb" and not local:
        raise UserError("reader", reader, "reads local folders only", "use auto or arrow")
    return reader if reader != "auto" else "duckdb" if local else "arrow"


def _run_of(base: str, path: str) -> str:
    """The run of a file ``<base>/run=<id>/…`` (a path from :func:`rayprof.sink._listing`)."""
    return path[len(base):].lstrip("/").split("/", 1)[0].removeprefix("run=")


def _actor_key(base: str, path: str) -> tuple[str, str, str]:
    """(run, worker, actor) of a file ``<base>/run=<id>/worker=<w>/part-<actor>-<seq>.parquet``."""
    run, worker, name = path[len(base):].lstrip("/").split("/")[-3:]
    m = _PART.match(name)
    return run.removeprefix("run="), worker.removeprefix("worker="), m.group("actor") if m else name


def _node_sql(actors: pd.DataFrame) -> str:
    """The ``node`` column: ``node_ip``, or a CASE over the node ids that share an IP."""
    from .summary import node_names

    nodes = actors[["node_ip", "node_id"]].drop_duplicates()
    named = [(i, n) for i, ip, n in zip(nodes["node_id"], nodes["node_ip"], node_names(nodes)) if n != ip]
    if not named:
        return "node_ip"
    return "CASE node_id " + " ".join(f"WHEN {_lit(i)} THEN {_lit(n)}" for i, n in named) + " ELSE node_ip END"


def _slow_units(peers: pd.DataFrame, stages: list[str], pct: float) -> list[dict]:
    """The stragglers among one group of peer actors (a row each: the median of ``total`` and
    ``stages``). A unit (an actor, or a node's actors) is compared with the median of the other
    actors' medians, so one slow actor among two is still found."""
    stages = [s for s in stages if peers[s].notna().any()]
    slow_actors: set[str] = set()
    found: list[dict] = []
    for kind, key in (("actor", "actor_id"), ("node", "node")):
        if peers[key].nunique() < 2:
            continue
        for name, unit in peers.groupby(key):
            mine, theirs = unit[["total", *stages]].median(), peers.loc[peers[key] != name, ["total", *stages]].median()
            slower = (mine["total"] / theirs["total"] - 1) * 100
            if not slower > pct:
                continue
            if kind == "actor":
                slow_actors.add(name)
            elif not set(unit["actor_id"]) <= slow_actors:
                continue  # some of its actors keep up: those that do not are named, not the node
            stage = (mine[stages] - theirs[stages]).idxmax() if stages else None
            found.append({"run_id": unit["run_id"].iat[0], "kind": kind, "name": name,
                          "workers": ",".join(sorted(set(unit["worker"]))), "actors": len(unit),
                          "steps": int(unit["steps"].sum()), "median_ms": mine["total"], "peers_ms": theirs["total"],
                          "slower_pct": slower, "stage": stage, "stage_ms": mine.get(stage),
                          "peers_stage_ms": theirs.get(stage)})
    slow_nodes = {r["name"] for r in found if r["kind"] == "node"}
    node_of = dict(zip(peers["actor_id"], peers["node"]))
    return [r for r in found if r["kind"] == "node" or node_of[r["name"]] not in slow_nodes]


def _same(by: list[str], a: str, b: str) -> str:
    return " AND ".join(f"{a}.{_q(c)} IS NOT DISTINCT FROM {b}.{_q(c)}" for c in by)


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _lit(value: str) -> str:
    return "'" + str(value).replace("'", "''") + "'"
