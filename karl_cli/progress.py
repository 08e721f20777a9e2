"""Progress of long jobs (scoring, encoding, calibration, training): one display for every command.

On a terminal: a rich progress bar (count, rate, elapsed, ETA, and a free-text ``info`` column).
Elsewhere (a log file, a background job) rich would print only the finished bar, so a plain line marks
every tenth of the work instead, per stage.
"""
from __future__ import annotations

import contextlib
import time
from typing import Any, Iterator, Protocol

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)
from rich.text import Text


class Update(Protocol):
    def __call__(self, done: int, total: int, stage: str | None = None, info: str = "") -> None: ...


class _RateColumn(ProgressColumn):
    """Items per second over the whole run (rich's own speed column smooths over a short window)."""

    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        elapsed = task.finished_time if task.finished else task.elapsed
        speed = task.completed / elapsed if elapsed and task.completed else None
        return Text(f"{speed:,.1f} {self.unit}/s" if speed else f"… {self.unit}/s", style="cyan")


@contextlib.contextmanager
def progress(console: Console, label: str, unit: str | None = "img") -> Iterator[Update]:
    """Yields ``update(done, total, stage=None, info="")``: ``done`` of ``total`` items of the job
    (of ``stage``, when it has stages, shown after ``label``), ``info`` a short status text (e.g. the
    loss). ``unit``: what an item is, for the rate column (None: no rate column)."""
    columns: list[Any] = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn()]
    if unit:
        columns.append(_RateColumn(unit))
    columns += [TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn()]
    plain = not console.is_terminal
    started = time.monotonic()
    shown: dict[str, int] = {}
    with Progress(*columns, console=console, transient=False, disable=plain) as bar:
        task = bar.add_task(label, total=None, info="")

        def update(done: int, total: int, stage: str | None = None, info: str = "") -> None:
            name = f"{label} {stage}" if stage else label
            bar.update(task, completed=done, total=total, description=name, info=info)
            tenth = done * 10 // total if total else -1
            if plain and tenth > shown.get(name, -1):
                shown[name] = tenth
                console.print(f"{name}: {done}/{total} ({tenth * 10} %), {time.monotonic() - started:.0f} s elapsed"
                              + (f", {info}" if info else ""), highlight=False, markup=False)

        yield update


@contextlib.contextmanager
def training_progress(console: Console) -> Iterator[Any]:
    """``progress`` for the trainer: yields its ``on_step(report)``, showing loss, L1, halting loss,
    tokens kept and img/s."""
    with progress(console, "train", unit=None) as update:
        def on_step(report: Any) -> None:
            m = report.metrics
            update(report.step, report.total, info=f"loss {m['loss']:.4f} L1 {m['rec2']:.4f} halt {m['halt']:.3f} "
                                                   f"kept {m['kept2']:.1f} {m['img_s']:.0f} img/s")

        yield on_step


# Off a terminal (a pipe, a file, a log) rich would cut every line at 80 columns, with "…" inside
# numbers; there a line is as wide as its content.
UNCUT_WIDTH = 100_000


def make_console(stderr: bool = False) -> Console:
    """A rich console on stdout (or stderr): the terminal's width, or uncut lines off a terminal."""
    c = Console(stderr=stderr)
    return c if c.is_terminal else Console(stderr=stderr, width=UNCUT_WIDTH)
