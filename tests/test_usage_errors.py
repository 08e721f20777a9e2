"""Usage errors: one clear line and exit 2; --debug shows the exception."""
from __future__ import annotations

from typer.testing import CliRunner
import torch

from karl_cli.cli import app
from karl_cli.errors import EXIT_USAGE, UsageError

from faults import invoke, job, weights, wide_console  # noqa: F401 - fixtures


# --- usage errors: one clear line, exit 2 ----------------------------------------------------------
def test_usage_errors_are_one_clear_line(job, weights):
    w = ["--weights", weights]
    imgs, csv_out = job / "imgs", ["--csv", job / "u.csv"]
    (job / "empty").mkdir()
    cases = [
        (["complexity", job / "missing", *w, *csv_out], "no such file or folder"),
        (["complexity", job / "empty", *w, *csv_out], "no images found"),
        (["encode", job / "empty", *w, "--out", job / "t2"], "no images found"),
        (["compare", job / "empty", *w], "no images found"),
        (["train", job / "empty", "--out", job / "r", "--preset", "tiny"], "no images found"),
        (["show", job / "missing.png", *w, "--out", job / "s.png"], "no such file"),
        (["correlate", "--ratings", job / "missing.csv", *w], "no such ratings file"),
        (["complexity", imgs, *w, *csv_out, "--shard", "4/4"], "shard"),
        (["complexity", imgs, *w, *csv_out, "--method", "magic"], "unknown method"),
        (["complexity", imgs, *w, *csv_out, "--device", "tpu"], "unknown device"),
        (["train", imgs, "--out", job / "r", "--preset", "tiny", "--steps", "0"], "--steps"),
        (["train", imgs, "--out", job / "r", "--preset", "tiny", "--steps", "2", "--batch-size", "0"],
         "--batch-size"),
        (["train", imgs, "--out", job / "r", "--preset", "tiny", "--steps", "2", "--lr", "nan"], "--lr"),
        (["train", imgs, "--out", job / "r", "--preset", "tiny", "--steps", "2", "--lr", "-1"], "--lr"),
        (["train", imgs, "--out", job / "r", "--preset", "tiny", "--epochs", "0"], "--epochs"),
        (["train", imgs, "--out", job / "r", "--preset", "tiny", "--steps", "2", "--checkpoint-every", "0"],
         "--checkpoint-every"),
        (["train", imgs, "--out", job / "r", "--preset", "tiny", "--steps", "2", "--warmup", "-1"], "--warmup"),
        (["train", imgs, "--out", job / "r", "--preset", "tiny", "--steps", "2", "--batch-size", "64"],
         "fewer than one batch"),
        (["train", imgs, "--out", job / "r", "--preset", "tiny", "--steps", "2", "--token-step", "5"],
         "multiple of token_step"),
        (["train", imgs, "--out", job / "r", "--preset", "tiny", "--steps", "2", "--max-tokens", "400"],
         "code needs max_tokens x latent_dim"),
    ]
    for bad_eps in ("0", "-0.1", "nan", "inf", "-inf"):
        cases += [(["complexity", imgs, *w, *csv_out, "--eps", bad_eps], "ε must be"),
                  (["encode", imgs, *w, "--out", job / "t3", "--eps", bad_eps], "ε must be"),
                  (["show", imgs / "img_000.png", *w, "--out", job / "s.png", "--eps", bad_eps], "ε must be"),
                  (["correlate", "--ratings", job / "ratings.csv", *w, "--eps", bad_eps], "ε must be"),
                  (["compare", imgs, *w, "--eps", bad_eps], "ε must be")]
    if not torch.cuda.is_available():
        for cmd in (["complexity", imgs, *w, *csv_out], ["encode", imgs, *w, "--out", job / "t4"],
                    ["decode", job / "tok", *w, "--out", job / "d"], ["show", imgs / "img_000.png", *w, "--out",
                                                                       job / "s.png"],
                    ["correlate", "--ratings", job / "ratings.csv", *w], ["compare", imgs, *w],
                    ["train", imgs, "--out", job / "r", "--preset", "tiny", "--steps", "1", "--batch-size", "2"]):
            cases.append(([*cmd, "--device", "cuda"], "CUDA is not available"))
    for args, words in cases:
        res = invoke(*args)
        assert res.exit_code == EXIT_USAGE, (args, res.exit_code, res.output)
        assert words in res.output, (args, res.output)
    assert not (job / "u.csv").exists() and not (job / "r" / "checkpoint.pt").exists()


def test_debug_shows_the_exception(job, weights):
    res = CliRunner().invoke(app, ["--debug", "complexity", str(job / "imgs"), "--weights", str(weights), "--csv",
                                   str(job / "o.csv"), "--eps", "0"])
    assert isinstance(res.exception, UsageError)
