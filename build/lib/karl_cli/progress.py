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
