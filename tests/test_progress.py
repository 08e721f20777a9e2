"""karl_cli.progress: one display for every long job; off a terminal, a plain line per tenth."""
from __future__ import annotations

import io
from types import SimpleNamespace

from rich.console import Console

from karl_cli.progress import progress, training_progress


def _console() -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, force_terminal=False, width=200), buf


def test_plain_lines_every_tenth_per_stage():
    console, buf = _console()
    with progress(console, "scoring") as update:
        for done in range(0, 101):
            update(done, 100)
        update(5, 10, "head")
    lines = buf.getvalue().splitlines()
    assert [line.split(":")[1].split("(")[0].strip() for line in lines[:11]] == [f"{10 * k}/100" for k in range(11)]
    assert lines[-1].startswith("scoring head: 5/10 (50 %)") and len(lines) == 12
    assert "━" not in buf.getvalue()


def test_training_progress_reports_the_loss():
    console, buf = _console()
    metrics = {"loss": 0.5, "rec2": 0.1, "halt": 0.2, "kept2": 12.0, "img_s": 30.0}
    with training_progress(console) as on_step:
        for step in (1, 5, 10):
            on_step(SimpleNamespace(step=step, total=10, metrics=metrics))
    out = buf.getvalue()
    assert "train: 10/10 (100 %)" in out and "loss 0.5000 L1 0.1000" in out
