"""The tables a run ends with, read back from its dataset: per worker (per batch end to end
for split pairs), per sweep point with scaling efficiency, and a split sweep's verdict. Also the
console the commands print with. No Ray, no pydantic: ``query`` and ``report`` import it too.
"""

from __future__ import annotations

import os
import sys

from typing import TYPE_CHECKING

import pandas as pd

from .metrics import BATCH_STAGES, batches, concurrent_fps, summarize, sweep_verdicts
from .sink import read_table, run_dir

if TYPE_CHECKING:
    from .driver import Manifest


def console():
    from rich.console import Console

    return Console(stderr=False, highlight=False, markup=False, soft_wrap=False,
                   width=None if sys.stdout.isatty() else 160)


def print_table(con, table) -> None:
    """Print a table whole: wider than the terminal rather than with truncated names."""
    from rich.measure import Measurement

    need = Measurement.get(con, con.options.update_width(10_000), table).maximum
    if need <= con.width:
        con.print(table)
        return
    from rich.console import Console

    Console(width=need, file=con.file, force_terminal=con.is_terminal, highlight=False, markup=False).print(table)


def summary_table(df: pd.DataFrame, statuses: dict[str, str] | None = None):
    """The final table, one block per worker (and split point in a sweep): throughput, then
    mean/p50/p90/p99 per stage (ms). A split pair's block is per batch end to end (see
    :func:`rayprof.metrics.batches`): both halves, the transfer, the waits, and ``e2e``."""
    from rich.table import Table

    b = batches(df)
    sweep = "sweep_point" in b and b["sweep_point"].nunique() > 1
    by = ["worker", "sweep_point"] if sweep else ["worker"]
    summary = summarize(b, by=by, stages=list(BATCH_STAGES))
    order = list(dict.fromkeys(statuses or {}))  # spec order, not alphabetical; sweep points as they ran
    rank = {w: i for i, w in enumerate(order)}
    started = b.groupby(by)["t_start"].min() if sweep else None
    summary["_order"] = [(rank.get(r["worker"], len(rank)), started[(r["worker"], r["sweep_point"])] if sweep else 0)
                         for _, r in summary.iterrows()]
    summary = summary.sort_values("_order", kind="stable")
    whole_batch = set(b.loc[b["role"] != "full", "worker"]) if not b.empty else set()  # pairs, in-process splits
    t = Table(box=None, header_style="bold", show_edge=False, pad_edge=False)
    columns = [("worker", False)] + ([("point", False)] if sweep else []) + [
        ("status", False), ("nodes", False), ("steps", True), ("frames", True), ("FPS", True), ("stage", False),
        ("mean ms", True), ("p50", True), ("p90", True), ("p99", True)]
    for col, right in columns:
        t.add_column(col, justify="right" if right else "left")
    nodes = (df.assign(node=node_names(df)).groupby(by)["node"].agg(lambda s: ",".join(sorted(set(s))))
             if not df.empty else {})  # per worker (and sweep point): where its actors ran
    for _, row in summary.iterrows():
        w = row["worker"]
        where = nodes.get((w, row["sweep_point"]) if sweep else w, "")
        stages = [s for s in BATCH_STAGES if pd.notna(row.get(f"{s}_mean"))]
        for j, s in enumerate(stages):
            head = j == 0
            label = "e2e" if s == "total" and w in whole_batch else BATCH_STAGES[s]
            t.add_row(
                w if head else "", *([str(row["sweep_point"]) if head else ""] if sweep else []),
                (statuses or {}).get(w, "") if head else "", where if head else "",
                f"{row['steps']}" if head else "", f"{row['frames']}" if head else "",
                f"{row['fps']:.1f}" if head else "", label,
                f"{row[f'{s}_mean']:.2f}", f"{row[f'{s}_p50']:.2f}", f"{row[f'{s}_p90']:.2f}", f"{row[f'{s}_p99']:.2f}",
                end_section=(j == len(stages) - 1),
            )
    measured = set(summary["worker"])
    for w, status in (statuses or {}).items():  # a worker with no measured step still gets its line
        if w not in measured:
            t.add_row(w, *([""] if sweep else []), status, nodes.get(w, ""), "0", "0", "-", "-", "-", "-", "-", "-",
                      end_section=True)
    return t


def sweep_summary(df: pd.DataFrame) -> pd.DataFrame | None:
    """Per sweep point, in the order they ran: the whole fleet's throughput and end-to-end
    latency, and the scaling efficiencies of :func:`rayprof.sweep.scaling`. None: no sweep."""
    from .sweep import scaling

    if df.empty or "sweep_point" not in df or df["sweep_point"].nunique() < 2:
        return None
    b = batches(df)
    b = b[~b["warmup"].astype(bool)]
    summary = summarize(b, by=["sweep_point"], stages=["total"])
    fps = b.groupby("sweep_point").apply(concurrent_fps, include_groups=False)
    summary = summary.assign(fps=summary["sweep_point"].map(fps))
    started = b.groupby("sweep_point")["t_start"].min()
    summary = summary.assign(_t=summary["sweep_point"].map(started)).sort_values("_t").drop(columns="_t")
    out = scaling(summary[["sweep_point", "steps", "frames", "fps", "total_p50", "total_p99"]])
    return out.round(4).reset_index(drop=True)


def sweep_table(points: pd.DataFrame):
    """The sweep at a glance: one line per point, efficiencies where the sweep has them."""
    from rich.table import Table

    effs = [c for c in ("strong", "weak", "replicas") if points[c].notna().any()]
    t = Table(box=None, header_style="bold", show_edge=False, pad_edge=False,
              title="sweep points (FPS: all actors running)")
    for col in ["point", "steps", "frames", "FPS", "e2e p50 ms", "e2e p99 ms"] + [f"{c} eff." for c in effs]:
        t.add_column(col, justify="left" if col == "point" else "right")
    for _, r in points.iterrows():
        t.add_row(str(r["sweep_point"]), f"{r['steps']}", f"{r['frames']}", f"{r['fps']:.1f}", f"{r['total_p50']:.1f}",
                  f"{r['total_p99']:.1f}", *(f"{r[c]:.2f}" if pd.notna(r[c]) else "-" for c in effs))
    return t


def split_sweeps(df: pd.DataFrame) -> list[dict]:
    """For every worker that swept its split point: the point with the lowest median
    end-to-end latency and the one with the highest throughput (warm-up excluded)."""
    if df.empty or "split_point" not in df:
        return []
    points = df["split_point"].fillna("none")
    sweeping = [w for w, n in points.groupby(df["worker"]).nunique().items() if n > 1]
    if not sweeping:
        return []
    b = batches(df[df["worker"].isin(sweeping)])
    summary = summarize(b.assign(point=b["split_point"].fillna("none")), by=["worker", "point"], stages=["total"])
    return sweep_verdicts(summary, sweeping)


def node_names(df: pd.DataFrame) -> pd.Series:
    """A display name per row's node: its IP, plus the start of the Ray node id where several
    nodes share an IP (a simulated cluster on one host)."""
    ids_per_ip = df.groupby("node_ip")["node_id"].nunique()
    shared = df["node_ip"].map(ids_per_ip).fillna(1) > 1
    ip = df["node_ip"].astype(str)
    return ip.where(~shared, ip + " [" + df["node_id"].astype(str).str[:8] + "]")


def print_summary(root: str | os.PathLike, run_id: str, statuses: dict[str, str], header: str,
                  manifest: Manifest | None = None) -> pd.DataFrame:
    """Read the run back from the dataset (what was written is what is reported) and print;
    a split sweep's verdict goes into the manifest too."""
    from .source import mask_url

    con = console()
    con.print(header)
    df = read_table(root, run_id).to_pandas()
    print_table(con, summary_table(df, statuses))
    n_warm = int(df["warmup"].sum())
    pairs = " e2e = a batch from the head's start to the tail's end." if df["role"].isin(["head", "split"]).any() else ""
    con.print(f"FPS = frames / wall-clock span; latencies in ms; {n_warm} warm-up step(s) excluded.{pairs} "
              f"Dataset: {mask_url(run_dir(root, run_id))}")
    points = sweep_summary(df)
    if points is not None:
        print_table(con, sweep_table(points))
        if manifest is not None:
            manifest.data["sweep"] = points.to_dict(orient="records")
            manifest.write()
    verdicts = split_sweeps(df)
    for v in verdicts:
        con.print(f"split sweep {v['worker']}: lowest end-to-end latency at {v['lowest_latency']} "
                  f"(p50 {v['latency_p50_ms']:.1f} ms); highest throughput at {v['highest_throughput']} "
                  f"({v['fps']:.1f} FPS)")
    if verdicts and manifest is not None:
        manifest.data["split_sweep"] = verdicts
        manifest.write()
    return df
