"""How commands show their results: JSON for scripts, tables and progress bars for people."""

from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from workbench.errors import WorkbenchError, disk_full
from workbench.results import Result

out = Console()


err = Console(stderr=True)


F = TypeVar("F", bound=Callable[..., Any])


def handled(fn: F) -> F:
    """One-line errors instead of tracebacks; Ctrl-C keeps committed work."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except WorkbenchError as exc:
            err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err.print("interrupted: committed work is kept; run the same command to resume")
            raise typer.Exit(130) from None
        except Exception as exc:
            if (message := disk_full(exc, where=_workspace_root(kwargs.get("workspace")))) is None:
                raise
            err.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def _workspace_root(option: Any) -> str | None:
    """The folder of the workspace a command was given (or the default one), for messages."""
    from workbench.manifest.workspace import Workspace

    try:
        return str(Workspace.at(option).root)
    except Exception:
        return None


class RateColumn(ProgressColumn):
    """Items per second, the figure people watch on long runs."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{speed:,.0f}/s", style="cyan")


class Bar:
    """`bar(done, total)` moves the bar; `bar.note(text)` sets the text beside it (loss, counts)."""

    def __init__(self, progress: Progress, task: Any):
        self._progress, self._task = progress, task

    def __call__(self, done: int, total: int | None) -> None:
        self._progress.update(self._task, completed=done, total=total)

    def note(self, text: str) -> None:
        self._progress.update(self._task, info=text)


class LogBar:
    """Progress outside a terminal (nohup, CI logs): a line on stderr every `every` seconds with
    the count, rate and time left, so a long step is never silent."""

    def __init__(self, description: str, every: float):
        self.description, self.every = description, every
        self.started = self.last = time.monotonic()
        self.info = ""

    def __call__(self, done: int, total: int | None) -> None:
        now = time.monotonic()
        if now - self.last < self.every:
            return
        self.last = now
        rate = done / max(now - self.started, 1e-9)
        left = f", about {(total - done) / rate:,.0f} s left" if total and rate > 0 else ""
        of = f"/{total:,}" if total else ""
        info = f" {self.info}" if self.info else ""
        err.print(f"{self.description}: {done:,}{of} ({rate:,.1f}/s{left}){info}", highlight=False,
                  soft_wrap=True)

    def note(self, text: str) -> None:
        self.info = text


@contextmanager
def progress_bar(description: str, enabled: bool = True) -> Iterator[Bar | LogBar]:
    """A rich progress bar on stderr in a terminal (not with --json); elsewhere a log line every
    $WB_PROGRESS_EVERY seconds (30)."""
    if not err.is_terminal:
        yield LogBar(description, float(os.environ.get("WB_PROGRESS_EVERY", "30")))
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), RateColumn(),
               TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err, disable=not enabled) as progress:
        yield Bar(progress, progress.add_task(description, total=None, info=""))


def serve_app(dataset_name: str, *, address: str, port: int, hint: str = "") -> None:
    """Open the FiftyOne App on a synced dataset and wait for Ctrl-C (or SIGTERM)."""
    import fiftyone as fo

    from workbench.browse.app import serve

    serve(fo.load_dataset(dataset_name), address=address, port=port,
          announce=lambda url: out.print(f"App: {url}  ({hint + '; ' if hint else ''}Ctrl-C to stop)",
                                         highlight=False))
    out.print("App stopped")


def plain(data: Any) -> Any:
    """A command's result as plain values (results are dataclasses; lists of them too)."""
    if isinstance(data, Result):
        return data.as_dict()
    if isinstance(data, list):
        return [plain(item) for item in data]
    return data


def print_json(data: Any) -> None:
    print(json.dumps(plain(data), indent=2, default=str))


def kv_table(title: str, rows: list[tuple[str, Any]]) -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(justify="right")
    for key, value in rows:
        table.add_row(key, str(value))
    return table


def rows_table(title: str, rows: list[dict[str, Any]]) -> Table:
    table = Table(title=title, title_justify="left")
    for name in rows[0] if rows else ["(none)"]:
        table.add_column(name)
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row.values()))
    return table


CALIBRATION_LEAD = ("known_recall", "measured_fpir", "recall", "merge_rate", "reused")


def report(title: str, summary: Result | dict[str, Any], as_json: bool, verbose: bool = False) -> None:
    """A command's summary: JSON on stdout for scripts; for people, the decisions first, the
    report's path on a line of its own (never cut), and a calibration's internals only with
    `verbose` (its estimated error rates always)."""
    if as_json:
        print_json(summary)
        return
    values = plain(summary)
    if values.get("report"):
        out.print(f"report: {values['report']}", highlight=False, soft_wrap=True)
    rows = flatten({k: v for k, v in values.items() if k not in ("warnings", "report")})
    hidden = [k for k in rows if k.startswith("calibration.") and not verbose
              and k.split(".", 1)[1] not in CALIBRATION_LEAD]
    out.print(kv_table(title, [(k, f"{v:.4g}" if isinstance(v, float) else v)
                               for k, v in rows.items() if k not in hidden]))
    if hidden:
        out.print(f"({len(hidden)} calibration details: --verbose, or --json)", highlight=False)
    warn(values.get("warnings", []))


def warn(lines: list[str]) -> None:
    """A result's warnings: one plain line each, on stderr, after the summary."""
    for line in lines:
        err.print(f"[yellow]warning:[/] {escape(line)}", highlight=False, soft_wrap=True)


def flatten(summary: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested summaries (a calibration inside an overlap run) as dotted keys, rounded pairs."""
    flat: dict[str, Any] = {}
    for key, value in summary.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        elif isinstance(value, list | tuple) and all(isinstance(v, float) for v in value):
            flat[prefix + key] = ", ".join(f"{v:.4g}" for v in value)
        else:
            flat[prefix + key] = value
    return flat


def comparison_table(result: Result | dict[str, Any]) -> Table:
    """Metrics by arm, as `wb compare` and `wb demo` print them: mean ± std where an arm has
    several runs (seeds), the value alone where it has one (one run has no spread to show)."""
    from workbench.evaluate.compare import ROWS

    result = plain(result)
    counts = sorted({len(arm["runs"]) for arm in result["arms"]})
    title = "comparison (one run per arm)" if counts == [1] else \
        f"comparison (mean ± std over {'/'.join(map(str, counts))} runs per arm)"
    table = Table(title=title, title_justify="left")
    table.add_column("metric")
    for arm in result["arms"]:
        runs = len(arm["runs"])
        table.add_column(f"{arm['arm']}" + (f" [{runs} runs]" if runs > 1 else ""))
    for label, _ in ROWS:
        cells = []
        for arm in result["arms"]:
            cell = arm[label]
            cells.append("n/a" if cell is None else f"{cell[0]:.4f}" if len(arm["runs"]) == 1
                         else f"{cell[0]:.4f} ± {cell[1]:.4f}")
        table.add_row(label, *cells)
    return table
