"""How ``rayprof runs`` and ``rayprof query`` print: rich tables on the terminal, CSV, JSON.

Pure: frames in, text or rich tables out; the CLI prints them.
"""

from __future__ import annotations

import json
import math

import pandas as pd

from .metrics import BATCH_STAGES, _percentile_cols

SQL_TABLE_ROWS = 1000  # a --sql result longer than this prints its head in table format
_STAT_HEADERS = ("mean ms", "p50", "p90", "p95", "p99", "p99.9")


def csv_text(df: pd.DataFrame) -> str:
    return df.to_csv(index=False).rstrip("\n")


def records(df: pd.DataFrame) -> list[dict]:
    """JSON-ready rows: NaN as null, timestamps in ISO 8601."""
    return json.loads(df.to_json(orient="records", date_format="iso", date_unit="ns"))


def json_text(value) -> str:
    return json.dumps(value, indent=2)


def summary_json(run_ids: list[str], summary: pd.DataFrame, stragglers: pd.DataFrame | None,
                 sweep: pd.DataFrame | None = None) -> str:
    """``{"runs": [...], "summary": [...], "stragglers": [...] or null (not looked for),
    "sweep": [...] or null (not one sweep run)}``."""
    return json_text({"runs": run_ids, "summary": records(summary),
                      "stragglers": None if stragglers is None else records(stragglers),
                      "sweep": None if sweep is None else records(sweep)})


def frame_table(df: pd.DataFrame, limit: int | None = None):
    """Any frame as a rich table (numbers right-aligned, floats to 6 significant digits)."""
    from rich.table import Table

    t = Table(box=None, header_style="bold", show_edge=False, pad_edge=False)
    for c in df.columns:
        t.add_column(str(c), justify="right" if pd.api.types.is_numeric_dtype(df[c]) else "left")
    for row in df.head(limit).itertuples(index=False):
        t.add_row(*(_cell(v) for v in row))
    return t


def _cell(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NaT:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, pd.Timestamp):
        return v.strftime("%Y-%m-%d %H:%M:%S")
    return str(v)


def runs_frame(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs as the table shows them: start to the second (UTC), duration rounded."""
    return runs.assign(started=runs["started"].dt.strftime("%Y-%m-%d %H:%M:%S"),
                       duration_s=runs["duration_s"].round(1))


def stage_label(stage: str, roles: str) -> str:
    """``total`` is ``e2e`` for batches made of split halves (as the final table says)."""
    if stage == "total" and roles != "full":
        return "e2e"
    return BATCH_STAGES.get(stage, stage)


def summary_table(summary: pd.DataFrame):
    """One block per group (the summary's columns before ``roles`` are its keys): keys, steps,
    frames, FPS and stability on the first line, then a line per stage with values (mean and
    percentiles, ms). The stability column goes on over the block's lines: verdict, FPS
    spread, p99 spread."""
    from rich.table import Table

    by = list(summary.columns[:summary.columns.get_loc("roles")])
    t = Table(box=None, header_style="bold", show_edge=False, pad_edge=False)
    for col in by:
        t.add_column(col)
    for col in ("steps", "frames", "FPS"):
        t.add_column(col, justify="right")
    t.add_column("stability")
    t.add_column("stage")
    for col in _STAT_HEADERS:
        t.add_column(col, justify="right")
    stages = [c.removesuffix("_mean") for c in summary.columns if c.endswith("_mean")]
    for _, row in summary.iterrows():
        shown = [s for s in stages if pd.notna(row[f"{s}_mean"])]
        notes = _stability_notes(row)
        for j, s in enumerate(shown or ["-"]):
            first = j == 0
            keys = [_cell(row[c]) if first else "" for c in by]
            head = [f"{row['steps']}", f"{row['frames']}", f"{row['fps']:.1f}"] if first else ["", "", ""]
            stats = [f"{row[c]:.2f}" for c in _percentile_cols(s)] if s != "-" else ["-"] * len(_STAT_HEADERS)
            note = notes[j] if j < len(notes) else ""
            t.add_row(*keys, *head, note, stage_label(s, row["roles"]) if s != "-" else "-", *stats,
                      end_section=j == len(shown) - 1)
    return t


def _stability_notes(row: pd.Series) -> list[str]:
    if row["stability"] == "short":
        return ["short", "(< 3 windows)"]
    verdict = "stable" if row["stability"] == "stable" else "UNSTABLE"
    return [verdict, f"fps ±{row['fps_spread_pct']:.1f}%", f"p99 ±{row['p99_spread_pct']:.1f}%"]


def summary_notes(summary: pd.DataFrame, include_warmup: bool, stability_pct: float) -> list[str]:
    """What the table's numbers are, in two lines."""
    windows = summary["window_steps"].dropna()
    steps = "-" if windows.empty else f"{windows.min():.0f}"
    if len(windows) and windows.max() > windows.min():
        steps += f"-{windows.max():.0f}"
    return [f"FPS = frames / wall-clock span of the group; latencies in ms; warm-up steps "
            f"{'included' if include_warmup else 'excluded'}.",
            f"stable = throughput and p99 of each actor's last 3 windows ({steps} steps each) agree within "
            f"{stability_pct:g}%."]


def straggler_lines(stragglers: pd.DataFrame, pct: float) -> list[str]:
    """A line per straggler: who, how much slower than its peers, and the stage that grew most."""
    if stragglers.empty:
        return [f"stragglers: none (no actor or node more than {pct:g}% slower than its peers)"]
    lines = [f"stragglers (median batch time more than {pct:g}% above their peers' doing the same work):"]
    for r in stragglers.itertuples():
        who = f"{r.kind} {r.name} ({r.workers}" + (f", {r.actors} actors)" if r.kind == "node" else ")")
        why = (f"; most in {r.stage}: {r.stage_ms:.2f} ms vs {r.peers_stage_ms:.2f} ms"
               if isinstance(r.stage, str) else "")
        lines.append(f"  {who}: {r.median_ms:.2f} ms vs {r.peers_ms:.2f} ms (+{r.slower_pct:.0f}%){why}")
    return lines
