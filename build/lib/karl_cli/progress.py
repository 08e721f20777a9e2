"""Rich progress displays for long jobs (training, scoring)."""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


@contextlib.contextmanager
def training_progress(console: Console) -> Iterator[Callable]:
    """A progress bar with loss, halting loss, img/s and ETA; yields the trainer's ``on_step``."""
    progress = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("eta"),
                        TimeRemainingColumn(), console=console, transient=False)
    task = None

    def on_step(report) -> None:
        nonlocal task
        m = report.metrics
        info = (f"loss {m['loss']:.4f} L1 {m['rec2']:.4f} halt {m['halt']:.3f} "
                f"kept {m['kept2']:.1f} {m['img_s']:.0f} img/s")
        if task is None:
            task = progress.add_task("train", total=report.total, completed=report.step, info=info)
        progress.update(task, completed=report.step, info=info)

    with progress:
        yield on_step


# Off a terminal (a pipe, a file, a log) rich would cut every line at 80 columns, with "…" inside
# numbers; there a line is as wide as its content.
UNCUT_WIDTH = 100_000


def make_console(stderr: bool = False) -> Console:
    """A rich console on stdout (or stderr): the terminal's width, or uncut lines off a terminal."""
    c = Console(stderr=stderr)
    return c if c.is_terminal else Console(stderr=stderr, width=UNCUT_WIDTH)
