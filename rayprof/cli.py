"""The ``rayprof`` command. Thin: parse → library call → print. User mistakes exit 2 with one
line on stderr; a run in which an actor failed (or that was stopped) exits 1."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from contextlib import contextmanager
from functools import wraps

import click

from . import __version__
from .errors import UserError, did_you_mean

# OpenCV's and FFmpeg's C logs go straight to stderr; keep a user error to its one line
# (set these variables yourself to see them again).
os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")


def _user_errors(fn: Callable) -> Callable:
    @wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            code = fn(*args, **kwargs)
        except UserError as e:
            click.echo(f"error: {e.message}", err=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt:  # a second Ctrl-C: what was flushed stays, the manifest may say running
            click.echo("error: aborted; the dataset keeps what was flushed (the manifest may still say running)",
                       err=True)
            sys.exit(1)
        sys.exit(code or 0)

    return wrapper


class _UsageLine(click.ClickException):
    """A command-line mistake click found, shown like a UserError: one ``error:`` line, exit 2."""

    exit_code = 2

    def show(self, file=None) -> None:
        click.echo(f"error: {self.message}", err=True)


_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())  # `rayprof` alone prints its help (click >= 8.2)


@contextmanager
def _one_line(info_name: str | None, args: list[str], parent: click.Context | None):
    """Click's own checks of a command's ``args`` (an unknown option, a value of the wrong type,
    a missing value) end as every user error does: one line naming the flag, the value and the fix."""
    try:
        yield
    except click.UsageError as e:
        if isinstance(e, _HELP):
            raise
        command = " ".join(n for n in (parent.command_path if parent else "", info_name or "rayprof") if n)
        raise _UsageLine(_usage_error(e, command, args).message) from None


def _usage_error(e: click.UsageError, command: str, args: list[str]) -> UserError:
    """Click's complaint about ``command``'s ``args`` as a UserError: the flag as typed and its value."""
    fix = f"see {command} --help"
    if isinstance(e, click.NoSuchOption):
        return UserError(e.option_name, e.option_name, f"is not an option of {command}"
                         + did_you_mean(e.option_name, e.possibilities or []), fix)
    param = getattr(e, "param", None)
    if isinstance(param, click.Option):
        field, value = _typed(args, [*param.opts, *param.secondary_opts]) or (param.opts[0], None)
    elif param is not None:  # an argument
        field, value = param.human_readable_name, None
    elif isinstance(e, click.BadOptionUsage):  # a flag without its value
        field, value = e.option_name, None
    else:  # an extra argument
        field, value = command, " ".join(args)
    problem = e.message if e.message or param is None else "is required"
    if value is not None:  # click starts with the value: "'abc' is not a valid integer."
        for shown in (repr(value), str(value)):
            problem = problem.removeprefix(f"{shown} ")
    return UserError(field, value, problem[:1].lower() + problem[1:].rstrip("."), fix)


def _typed(args: list[str], flags: list[str]) -> tuple[str, str] | None:
    """The first of ``flags`` in ``args`` and the value given to it (``--flag value`` or ``--flag=value``)."""
    for i, arg in enumerate(args):
        flag, eq, value = arg.partition("=")
        if flag in flags and (eq or i + 1 < len(args)):
            return flag, value if eq else args[i + 1]
    return None


class _OneLine:
    """A click command whose command-line mistakes are one line (:func:`_one_line`)."""

    def make_context(self, info_name, args, parent=None, **extra):
        with _one_line(info_name, list(args), parent):
            return super().make_context(info_name, args, parent, **extra)


class _Command(_OneLine, click.Command):
    pass


class _Group(_OneLine, click.Group):
    """``rayprof``: every subcommand's command-line mistakes are one line, and so is an unknown command."""

    command_class = _Command

    def resolve_command(self, ctx, args):
        name = args[0] if args else ""
        if name and not name.startswith("-") and self.get_command(ctx, name) is None:
            raise _UsageLine(UserError("COMMAND", name, f"is not a {ctx.command_path} command"
                                       + did_you_mean(name, self.list_commands(ctx)),
                                       f"see {ctx.command_path} --help").message)
        return super().resolve_command(ctx, args)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="rayprof")
def main() -> None:
    """Profile PyTorch models on video streams, one stream per Ray actor."""


_set = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                    help="Override a spec value, e.g. defaults.batch_size=32 or workers.r18.max_steps=50 (repeatable).")


@main.command()
@click.argument("spec_path", metavar="SPEC")
@_set
@click.option("--address", default=None, help="Ray cluster address (auto, host:port, ray://host:10001). "
              "Default: spec `address`, then RAY_ADDRESS, then an embedded local Ray.")
@click.option("--output", default=None, help="Dataset root (overrides the spec's `output`).")
@click.option("--nsys", is_flag=True, help="Run every worker under Nsight Systems (profile.nsys with its defaults "
              "where a worker sets none); the reports land in run=<id>/_profiles/nsys/.")
@click.option("--resume", default=None, metavar="RUN_ID|latest", help="Go on with an interrupted sweep: the sweep "
              "points it completed are kept, the others run again (same spec and --set values).")
@_user_errors
def submit(spec_path: str, overrides: tuple[str, ...], address: str | None, output: str | None, nsys: bool,
           resume: str | None) -> int:
    """Run the fleet in SPEC on Ray: one actor per worker replica."""
    from .spec import load_fleet

    spec = load_fleet(spec_path, list(overrides), output=output)
    if nsys:
        spec = _with_nsys(spec)
    from . import fleet

    return fleet.submit(spec, address=address, resume=resume)


def _with_nsys(spec):
    """``--nsys``: ``profile.nsys`` with its defaults on every worker that has none."""
    from .spec import NsysSpec

    on = [w if w.profile.nsys else w.model_copy(update={"profile": w.profile.model_copy(update={"nsys": NsysSpec()})})
          for w in spec.workers]
    return spec.model_copy(update={"workers": on})


@main.command()
@click.argument("spec_path", metavar="SPEC")
@_set
@click.option("--remote", is_flag=True, help="The workers run on a cluster: skip the checks of local files, cores and GPUs.")
@click.option("--address", default=None, help="Plan on this running Ray cluster (auto, host:port, ray://host:10001): "
              "shows each actor's node and cores as submit would place them, starting nothing.")
@_user_errors
def validate(spec_path: str, overrides: tuple[str, ...], remote: bool, address: str | None) -> int:
    """Check SPEC without starting anything and print the resolved plan."""
    from rich.table import Table

    from . import driver
    from .plan import make_run_id
    from .source import mask_url
    from .spec import load_fleet
    from .summary import console, print_table

    spec = driver.resolve_splits(load_fleet(spec_path, list(overrides)))
    labels: dict[str, str] = {}
    if address:
        from . import fleet

        plans, labels = fleet.plan_on_cluster(spec, address)
    elif remote:  # the cluster's cores and GPUs are not known here: cores checked for syntax only
        from .plan import plan_fleet

        driver.preflight(spec, local=False)
        plans = plan_fleet(spec, make_run_id(spec.run), cores_available=None, cuda_available=False)
    else:
        driver.preflight(spec, local=True)
        plans = driver.local_plans(spec, make_run_id(spec.run))
    rows = [{**({"node": labels.get(p.node_id, "-")} if address else {}), **driver.plan_row(p)} for p in plans]
    unused = [c for c in ("point", "split") if all(r[c] == "-" for r in rows)]  # no sweep, no split: no column
    rows = [{k: v for k, v in r.items() if k not in unused} for r in rows]
    table = Table(box=None, header_style="bold",
                  title=f"{spec_path}: {len(plans)} actor(s), output {mask_url(spec.output)}/")
    for col in rows[0]:
        table.add_column(col)
    for r in rows:
        table.add_row(*(str(v) for v in r.values()))
    con = console()
    print_table(con, table)
    con.print("spec OK")
    return 0


@main.command(context_settings={"ignore_unknown_options": False})
@click.option("--model-name", "--model_name", "model_name", default="resnet50", show_default=True,
              help="torchvision classification model (see `rayprof models`).")
@click.option("--input_path", "--input-path", "input_path", default="sample", show_default=True,
              help="Video file, camera index ('0'), http(s)/rtsp URL, 'synthetic', or 'sample' (generated test video).")
@click.option("--mode", type=click.Choice(["inference", "retrain"]), default="inference", show_default=True)
@click.option("--batch-size", "--batch_size", "batch_size", type=int, default=8, show_default=True)
@click.option("--prep-level", "--prep_level", "prep_level", default="simple", show_default=True,
              help="simple, medium or complex.")
@click.option("--prep-on-gpu", "--prep_on_gpu", "prep_on_gpu", is_flag=True, help="Preprocess on the GPU.")
@click.option("--infer-on-gpu", "--infer_on_gpu", "infer_on_gpu", is_flag=True,
              help="Run the model on the GPU (default: CPU, as in the original tool).")
@click.option("--core-bind", "--core_bind", "core_bind", default="all", show_default=True,
              help="CPU cores to pin: all, 0-3, 0,2,4-5.")
@click.option("--enable-compile", "--enable_compile", "enable_compile", is_flag=True, help="torch.compile the model (inference).")
@click.option("--use-amp", "--use_amp", "use_amp", is_flag=True, help="Automatic mixed precision.")
@click.option("--max-steps", "--max_steps", "max_steps", type=int, default=100, show_default=True,
              help="Batches to run; 0 = until the video ends.")
@click.option("--warmup-steps", "warmup_steps", type=int, default=5, show_default=True,
              help="First steps flagged warm-up, left out of the summary.")
@click.option("--weights", default=None, help="none (random init), a torchvision weights name, or a local state-dict path.")
@click.option("--num-classes", "num_classes", type=int, default=None, help="Retrain: classes of the new head.")
@click.option("--split-point", "--split_point", "split_point", default=None, metavar="[MODEL:]MODULE",
              help="Cut the model after MODULE (e.g. resnet50:layer3): the head half on the CPU, the tail on the "
                   "model's device, the activation moved between them in this process (see `rayprof split-points`).")
@click.option("--loop", is_flag=True, help="Loop a video file until --max-steps.")
@click.option("--pipeline", type=click.Choice(["serial", "overlap"]), default="serial", show_default=True,
              help="overlap: read and preprocess the next batch while the model runs this one.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--output", default="runs", show_default=True, help="Dataset root.")
@click.option("--run-name", "run_name", default="run", show_default=True)
@_user_errors
def run(**o) -> int:
    """Run ONE worker in this process, without Ray (the original worker.py's flags)."""
    from . import driver
    from .spec import parse_fleet

    worker = {
        "name": re.sub(r"[^A-Za-z0-9_.-]+", "-", o["model_name"]).strip("-.")[:64] or "worker",
        "source": {"uri": o["input_path"], "loop": o["loop"]},
        "model": {"name": o["model_name"], "weights": o["weights"], "num_classes": o["num_classes"],
                  "compile": o["enable_compile"], "amp": o["use_amp"]},
        "mode": o["mode"],
        "batch_size": o["batch_size"],
        "prep": {"level": o["prep_level"], "device": "cuda" if o["prep_on_gpu"] else "cpu"},
        "device": "cuda" if o["infer_on_gpu"] else "cpu",
        "cores": o["core_bind"],
        "max_steps": o["max_steps"],
        "warmup_steps": o["warmup_steps"],
        "seed": o["seed"],
        "pipeline": o["pipeline"],
    }
    if o["split_point"]:
        worker["model"]["split"] = o["split_point"]
        worker["pair"] = {"in_process": True}
    try:
        spec = parse_fleet({"run": o["run_name"], "output": o["output"], "workers": [worker]}, "rayprof run")
        return driver.run_single(spec)
    except UserError as e:  # name the flag the user typed, not the spec key behind it
        key = e.field.removeprefix("workers[0].")
        if key in RUN_FLAGS:
            raise UserError(RUN_FLAGS[key], e.value, e.problem, e.fix) from None
        raise


#: spec key → the `rayprof run` flag that sets it (for error messages)
RUN_FLAGS = {
    "model.name": "--model-name", "source.uri": "--input_path", "mode": "--mode", "batch_size": "--batch-size",
    "prep.level": "--prep-level", "prep.device": "--prep-on-gpu", "device": "--infer-on-gpu",
    "cores": "--core-bind", "model.compile": "--enable-compile", "model.amp": "--use-amp",
    "max_steps": "--max-steps", "warmup_steps": "--warmup-steps", "model.weights": "--weights",
    "model.num_classes": "--num-classes", "seed": "--seed", "run": "--run-name", "output": "--output",
    "model.split": "--split-point", "pair.head_device": "--split-point", "pipeline": "--pipeline",
}


@main.command()
@click.option("--filter", "pattern", default=None, help="Only names containing this text.")
@_user_errors
def models(pattern: str | None) -> int:
    """List the torchvision classification models rayprof can load."""
    from .checks import classification_models  # torchvision's list, kept per version: no torch import

    names = [n for n in classification_models() if not pattern or pattern in n]
    click.echo("\n".join(names))
    return 0


@main.command("split-points")
@click.argument("model_name", metavar="MODEL")
@click.option("--size", type=click.IntRange(min=32), default=224, show_default=True,
              help="Input height and width for the activation shapes.")
@_user_errors
def split_points(model_name: str, size: int) -> int:
    """List where MODEL can be cut (model.split), with each activation's shape for one image."""
    from .split import point_shapes

    try:
        rows = point_shapes(model_name, size, field="--size")
    except UserError as e:  # name the argument the user typed, not the spec key behind it
        if e.field != "model.name":
            raise
        raise UserError("MODEL", e.value, e.problem, e.fix) from None
    width = max((len(point) for point, _ in rows), default=0)
    click.echo("\n".join(f"{point:<{width}}  {shape}" for point, shape in rows))
    return 0


@main.command("sample-video")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--seconds", type=float, default=10.0, show_default=True)
@click.option("--fps", type=float, default=30.0, show_default=True)
@click.option("--size", default="640x360", show_default=True, help="WIDTHxHEIGHT")
@_user_errors
def sample_video(path: str, seconds: float, fps: float, size: str) -> int:
    """Write a generated test video (moving shapes, frame counter) to PATH."""
    from .source import make_sample_video

    try:
        width, height = (int(v) for v in size.lower().split("x"))
    except ValueError:
        raise UserError("--size", size, "is not WIDTHxHEIGHT", "write e.g. --size 1280x720") from None
    if seconds <= 0 or fps <= 0 or width <= 0 or height <= 0:
        raise UserError("--seconds/--fps/--size", f"{seconds}/{fps}/{size}", "must be positive", "give positive values")
    out = make_sample_video(path, seconds=seconds, fps=fps, width=width, height=height)
    click.echo(str(out))
    return 0


_format = click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table",
                       show_default=True, help="How to print: a table, CSV or JSON.")


@main.command()
@click.argument("root", metavar="ROOT")
@_format
@_user_errors
def runs(root: str, fmt: str) -> int:
    """List the runs in the dataset at ROOT: id, name, start (UTC), duration, status, workers, nodes, steps."""
    from . import query_format as qf
    from .query import open_dataset

    table = open_dataset(root).runs()
    _print_frame(qf.runs_frame(table) if fmt == "table" else table, fmt)
    return 0


@main.command()
@click.argument("root", metavar="ROOT")
@click.option("--run", "run", default=None, help="A run id (or its start), latest or all. "
              "Default: latest for the summary, all for --sql.")
@click.option("--by", default=None, help="Group by these columns of the steps view, comma-separated, e.g. worker,node. "
              "Default: worker, after run_id and sweep_point where the selection has several.")
@click.option("--include-warmup", is_flag=True, help="Count warm-up steps too.")
@_format
@click.option("--sql", "sql", default=None, metavar="QUERY",
              help="DuckDB SQL over the views steps (every row) and batches (a row per batch end to end) "
                   "instead of the summary.")
@click.option("--window", type=int, default=None, help="Steps per stability window "
              "(default: a third of each actor's steps, at most 100).")
@click.option("--stability-pct", type=float, default=10.0, show_default=True,
              help="Stable when throughput and p99 of the last 3 windows agree within this percentage.")
@click.option("--straggler-pct", type=float, default=20.0, show_default=True,
              help="Name actors and nodes whose median batch time is this much above their peers' (0: do not look).")
@_user_errors
def query(root: str, run: str | None, by: str | None, include_warmup: bool, fmt: str, sql: str | None,
          window: int | None, stability_pct: float, straggler_pct: float) -> int:
    """Summarize the dataset at ROOT per group (steps, FPS, mean and p50-p99.9 of every stage,
    stability, stragglers), or run --sql over it."""
    from . import query_format as qf
    from .query import open_dataset, sql_errors
    from .summary import console, print_table, sweep_table

    if sql is not None:
        if by or include_warmup or window is not None:
            raise UserError("--sql", sql, "is a query of its own: --by, --include-warmup and --window do not apply",
                            "group and filter in the SQL (WHERE NOT warmup), or leave --sql out")
        ds = open_dataset(root, run)
        with sql_errors(sql):
            result = ds.sql(sql).df()
        _print_frame(result, fmt, limit=qf.SQL_TABLE_ROWS)
        return 0
    ds = open_dataset(root, run or "latest")
    columns = by.split(",") if by is not None else None
    summary = ds.summary(by=columns, include_warmup=include_warmup, window=window, stability_pct=stability_pct)
    stragglers = ds.stragglers(include_warmup, straggler_pct) if straggler_pct else None
    sweep = ds.sweep() if fmt != "csv" else None
    if fmt == "csv":
        click.echo(qf.csv_text(summary))
    elif fmt == "json":
        click.echo(qf.summary_json(ds.run_ids, summary, stragglers, sweep))
    else:
        con = console()
        con.print(f"run {', '.join(ds.run_ids)}" if len(ds.run_ids) < 4 else f"{len(ds.run_ids)} runs")
        if summary.empty:
            con.print("no measured steps yet")
            return 0
        print_table(con, qf.summary_table(summary))
        if sweep is not None:
            print_table(con, sweep_table(sweep))
        lines = qf.summary_notes(summary, include_warmup, stability_pct)
        for line in lines + (qf.straggler_lines(stragglers, straggler_pct) if stragglers is not None else []):
            con.print(line)
    return 0


@main.command("index")
@click.argument("root", metavar="ROOT")
@click.option("--run", "run", default="all", show_default=True, help="A run id (or its start), latest or all.")
@click.option("--force", is_flag=True, help="Index runs whose manifest still says running (a driver killed "
              "before the end) and rebuild current indexes.")
@_user_errors
def index_(root: str, run: str, force: bool) -> int:
    """Build the summary index of the runs at ROOT that lack a current one, so that `rayprof query`
    answers from it without reading the rows. A run indexes itself when it ends: this is for runs
    cut short, or datasets changed since."""
    import time

    from . import index
    from .query import open_dataset

    ds = open_dataset(root, run)
    for run_id in ds.run_ids:
        status = ds._manifest(run_id).get("status", "-")
        if run_id in ds.indexes and not force:
            click.echo(f"{run_id}: index is current")
        elif status == "running" and not force:
            click.echo(f"{run_id}: skipped, its manifest says running (--force indexes it as it is now)")
        else:
            t0 = time.perf_counter()
            index.build(root, run_id)
            click.echo(f"{run_id}: indexed in {time.perf_counter() - t0:.1f} s")
    return 0


def _print_frame(df, fmt: str, limit: int | None = None) -> None:
    from . import query_format as qf
    from .summary import console, print_table

    if fmt == "csv":
        click.echo(qf.csv_text(df))
    elif fmt == "json":
        click.echo(qf.json_text(qf.records(df)))
    else:
        con = console()
        print_table(con, qf.frame_table(df, limit))
        if limit is not None and len(df) > limit:
            con.print(f"… {len(df) - limit} more rows (--format csv or json prints them all)")


@main.command()
@click.argument("root", metavar="ROOT")
@click.option("--run", "run", default="latest", show_default=True, help="A run id, or latest.")
@click.option("-o", "--output", "output", default="report.html", show_default=True,
              help="The page to write; its PNGs go beside it as <name>-<plot>.png.")
@click.option("--include-warmup", is_flag=True, help="Count warm-up steps in the statistics too "
              "(the timeline always shows them).")
@_user_errors
def report(root: str, run: str, output: str, include_warmup: bool) -> int:
    """Write one self-contained HTML page about a run of the dataset at ROOT: the summary, where
    the time goes, latency over time, latency CDFs, throughput per node and, for a sweep,
    throughput, p99 and scaling against the swept value."""
    from .report import write_report

    page, *pngs = write_report(root, run, output, include_warmup=include_warmup)
    click.echo(f"{page} ({len(pngs)} plots, also written beside it: {', '.join(p.name for p in pngs)})")
    return 0


if __name__ == "__main__":  # pragma: no cover
    main()
