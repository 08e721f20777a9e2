"""benchmarks/throughput.py: one quick run on a few generated images with a tiny model, every field there."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import load_script, make_images

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "throughput.py"


@pytest.fixture(scope="module")
def throughput():
    return load_script(SCRIPT, "karl_bench_throughput")


def _positive(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v) and v > 0


@pytest.mark.slow
def test_throughput_reports_every_figure(throughput, tmp_path, capsys):
    folder = tmp_path / "imgs"
    make_images(folder, 8)
    out = tmp_path / "bench.json"
    res = throughput.main([str(folder), "--tiny", "--repeats", "1", "--batch-size", "4", "--workers", "0",
                           "--threads", "1", "--json", str(out)])
    printed = capsys.readouterr().out
    assert json.loads(out.read_text()) == json.loads(json.dumps(res, default=float))
    for key in ("command", "machine", "throughput"):
        assert key in res
    m = res["machine"]
    assert m["cpu"] and m["cores"] >= 1 and m["torch_threads"] == 1 and m["device"] == "cpu"
    t = res["throughput"]
    assert t["images"] == 8
    assert set(t["methods"]) == {"decode_only", "single", "kc_only", "decoder_check", "search", "prefix"}
    for name, e in t["methods"].items():
        assert _positive(e["images_per_s"]) and _positive(e["cpu_ms_per_image"]), name
        assert len(e["images_per_s_runs"]) == 1
    assert t["methods"]["single"]["encoder_runs"] == 1 and t["methods"]["single"]["decoder_runs"] == 0   # code check
    assert t["methods"]["decoder_check"]["encoder_runs"] == t["methods"]["decoder_check"]["decoder_runs"] == 1
    assert t["methods"]["single"]["l1_mean"] is not None                  # the code's L1
    assert t["methods"]["kc_only"]["decoder_runs"] == 0 and t["methods"]["kc_only"]["l1_mean"] is None
    assert t["methods"]["search"]["encoder_runs"] >= 1 and t["methods"]["prefix"]["encoder_runs"] == 1
    for k in ("single_vs_decode_only", "kc_only_vs_decode_only", "decoder_check_vs_decode_only", "single_speedup_vs_search",
              "single_speedup_vs_prefix"):
        assert _positive(t["ratios"][k]), k
    for k in ("decode_images", "encoder", "decoder", "total"):
        assert _positive(t["stages_ms_per_image"][k]), k
    for k in ("rss_peak_mb", "python_heap_peak_mb", "rss_now_mb"):
        assert _positive(t["memory"][k]), k
    assert set(t["targets"]) == {"single_4x_faster_than_search", "single_half_of_decode_only",
                                 "kc_only_four_fifths_of_decode_only"}
    # The human-readable report names the machine, the command and each method.
    for text in ("command:", "machine:", "decode_only", "single", "search", "prefix", "stages", "memory:"):
        assert text in printed


@pytest.mark.slow
def test_synthetic_memory_stream(throughput, tmp_path, capsys):
    res = throughput.main(["--synthetic", "300", "--tiny", "--batch-size", "32", "--workers", "0", "--threads", "1",
                           "--no-l1", "--json", "-"])
    captured = capsys.readouterr()
    assert json.loads(captured.out)["synthetic"]["images"] == 300    # JSON alone on stdout
    s = res["synthetic"]
    assert s["rows"] == 300 and s["errors"] == 0   # 256 distinct images, the rest hard links to them
    assert _positive(s["images_per_s"]) and _positive(s["csv_bytes"])
    assert set(s["rss_mb"]) == {"start", "first_batch", "middle", "end"}
    assert all(_positive(v) for v in s["rss_mb"].values())
    assert "memory stream (--no-l1)" in captured.err and s["l1"] is False


def test_bad_arguments_exit(throughput, tmp_path):
    with pytest.raises(SystemExit):
        throughput.main([])                                    # neither a folder nor --synthetic
    with pytest.raises(SystemExit):
        throughput.main([str(tmp_path), "--tiny", "--methods", "search"])   # single is the reference


# --- the perf options the benchmark measures -------------------------------------------------------------
def test_kc_only_skips_the_decoder_and_keeps_kc(tiny_model, tmp_path):
    from karl_cli.scoring.complexity import score
    from karl_cli.errors import UsageError

    folder = tmp_path / "imgs"
    make_images(folder, 6)
    full = list(score([folder], tiny_model, [0.05, 0.2], batch_size=4, check="decoder"))
    fast = list(score([folder], tiny_model, [0.05, 0.2], batch_size=4, l1=False))
    assert [(r["path"], r["eps"], r["kc"], r["kc_soft"]) for r in fast] == \
        [(r["path"], r["eps"], r["kc"], r["kc_soft"]) for r in full]
    assert all(r["l1"] is None and r["decoder_runs"] == 0 and r["encoder_runs"] == 1 for r in fast)
    assert all(r["l1"] is not None and r["decoder_runs"] == 1 for r in full)
    with pytest.raises(UsageError, match="single"):
        score([folder], tiny_model, [0.05], method="search", l1=False)


def test_cli_no_l1(tiny_model, tmp_path):
    from typer.testing import CliRunner

    from karl_cli.cli import app
    from karl_cli.io.rows import read_rows
    from karl_cli.errors import EXIT_USAGE

    folder, weights = tmp_path / "imgs", tmp_path / "w"
    make_images(folder, 4)
    tiny_model.save_pretrained(str(weights))
    base = ["complexity", str(folder), "--weights", str(weights), "--workers", "0", "--device", "cpu"]
    res = CliRunner().invoke(app, base + ["--no-l1", "--csv", str(tmp_path / "a.csv")])
    assert res.exit_code == 0, res.output
    rows = read_rows(tmp_path / "a.csv")
    assert len(rows) == 4 and all(r["l1"] is None and r["decoder_runs"] == 0 for r in rows)
    res = CliRunner().invoke(app, base + ["--no-l1", "--method", "search", "--csv", str(tmp_path / "b.csv")])
    assert res.exit_code == EXIT_USAGE and not (tmp_path / "b.csv").exists()


def test_conv_models_run_channels_last_on_cpu(tiny_model):
    import torch

    from karl_cli.runtime import prepare_model, to_model_input

    x = to_model_input(torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8), "cpu")
    ref = tiny_model.encode(x.contiguous(), 0.05)
    prepare_model(tiny_model, "cpu")
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert tiny_model.base.stem[0].weight.is_contiguous(memory_format=torch.channels_last)
    enc = tiny_model.encode(x, 0.05)
    assert torch.allclose(enc.latents, ref.latents, atol=1e-5) and torch.allclose(enc.p_halt, ref.p_halt, atol=1e-5)


def test_default_workers_per_device(monkeypatch):
    import torch

    import os

    from karl_cli.runtime import default_workers

    monkeypatch.setattr(os, "cpu_count", lambda: 32)
    assert default_workers(torch.device("cpu")) == default_workers(None) == 4
    assert default_workers(torch.device("cuda", 1)) == default_workers("cuda") == 16
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert default_workers(torch.device("cpu")) == 2 and default_workers("cuda:0") == 7
    monkeypatch.setattr(os, "cpu_count", lambda: 2)    # this machine: decode in the main process
    assert default_workers(torch.device("cpu")) == 0 and default_workers(torch.device("cuda")) == 1


@pytest.mark.slow
def test_baselines_benchmark_reports_every_measure(tmp_path, tiny_weights):
    bench = load_script(SCRIPT.parent / "baselines.py", "karl_bench_baselines")
    folder = tmp_path / "imgs"
    make_images(folder, 5)
    out = tmp_path / "b.json"
    res = bench.main([str(folder), "--weights", str(tiny_weights), "--limit", "4", "--repeats", "1",
                      "--workers", "0", "--threads", "1", "--json", str(out)])
    assert json.loads(out.read_text())["images"] == res["images"] == 4
    from karl_cli.scoring.baselines import REGISTRY
    assert set(res["per_measure_ms"]) == set(REGISTRY) and all(_positive(v) for v in res["per_measure_ms"].values())
    assert set(res["end_to_end_s"]) == {"none", "jpeg,png", "all"} and set(res["added"]) == {"jpeg,png", "all"}
    assert all(_positive(v) for v in res["end_to_end_s"].values())


BENCH_SCRIPTS = sorted((SCRIPT.parent).rglob("*.py"))


@pytest.mark.parametrize("script", BENCH_SCRIPTS, ids=lambda p: str(p.relative_to(SCRIPT.parent)))
def test_every_benchmark_script_answers_help(script):
    """The README sends users to these scripts: ``--help`` must print usage, not a traceback."""
    res = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=300,
                         cwd=SCRIPT.parent.parent)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "usage:" in res.stdout and "Traceback" not in res.stderr


# --- the profile (--profile, --threads-sweep) and its projection -------------------------------------------
def test_profile_sweep_one_entry_per_thread_count(throughput, tmp_path, capsys):
    folder = tmp_path / "imgs"
    make_images(folder, 6)
    out = tmp_path / "profile.json"
    res = throughput.main([str(folder), "--tiny", "--threads-sweep", "1,2", "--repeats", "1", "--batch-size", "4",
                           "--workers", "0", "--project-cores", "8", "--json", str(out)])
    printed = capsys.readouterr().out
    saved = json.loads(out.read_text())
    assert saved["complete"] is True and saved["profile"] == json.loads(json.dumps(res["profile"], default=float))
    p = res["profile"]
    assert [e["threads"]["torch"] for e in p["entries"]] == [1, 2]
    for e in p["entries"]:
        assert e["threads"]["numba"] == min(e["threads"]["torch"], e["threads"]["numba_pool"])
        assert set(e["modes"]) >= {"decode_only", "kc_only", "single", "decoder_check"}
        for m in ("kc_only", "single", "decoder_check"):
            v = e["modes"][m]
            st = v["stages_ms_per_image"]
            assert set(st) == {*throughput.STAGES, "total"} and all(x >= 0 for x in st.values())
            # The stages are exclusive: they add up to the pass's wall time (rest is what is left).
            assert math.isclose(sum(st[s] for s in throughput.STAGES), st["total"], rel_tol=1e-6)
            assert st["encoder"] > 0 and st["kernel_order"] > 0 and st["kernel_prefix_l1"] > 0   # tiny: wavelet code
            assert _positive(v["images_per_s"]) and v["calls"]["kernel_order"] >= 1
        assert e["modes"]["kc_only"]["stages_ms_per_image"]["decoder"] == 0
        assert e["modes"]["single"]["stages_ms_per_image"]["decoder"] == 0           # the code's check: no decoder
        assert e["modes"]["decoder_check"]["stages_ms_per_image"]["decoder"] > 0
    # The projection is a function of the entries alone.
    assert p["projection"] == json.loads(json.dumps(throughput.project(p["entries"], 8, throughput.torch.device("cpu")),
                                                    default=float))
    assert set(p["projection"]["modes"]["single"]) == {"fit", "cpu", "gpu"}
    assert p["projection"]["modes"]["single"]["gpu"]["workers"] == 7            # default_workers on 8 cores, CUDA
    for text in ("kernel prefix l1", "projection to 8 cores", "assumptions:", "kc_only @1/1", "single @2/2"):
        assert text in printed


def test_profiled_pass_redoes_a_batch_it_has_seen(throughput, tiny_model, tmp_path):
    """One batch run twice: the second pass still runs the encoder's kernels (the model's memo of the
    last batch is cleared), as a real run meets a new batch every time."""
    import torch

    folder = tmp_path / "imgs"
    make_images(folder, 3)
    items = throughput.collect_inputs([folder])
    first = throughput.run_profiled(items, tiny_model, 0.05, "kc_only", 4, torch.device("cpu"))
    again = throughput.run_profiled(items, tiny_model, 0.05, "kc_only", 4, torch.device("cpu"))
    assert first["calls"]["kernel_order"] == again["calls"]["kernel_order"] >= 1
    assert again["calls"]["kernel_prefix_l1"] >= 1


def test_profiled_pass_decodes_serially(throughput, tmp_path):
    """In a profiled pass nothing decodes ahead (no loader process or thread) to overlap the timed stages."""
    import threading

    folder = tmp_path / "imgs"
    make_images(folder, 4)
    items = throughput.collect_inputs([folder])
    original = throughput.cx.image_batches
    before = threading.active_count()
    with throughput.serial_decode():
        batches = throughput.cx.image_batches(items, 32, 2, 0)
        first = next(batches)
        assert threading.active_count() == before
    assert throughput.cx.image_batches is original and first["images"].shape[0] == 2


def _entry(threads: int, stages: dict[str, float], images_per_s: float = 100.0) -> dict:
    full = {s: stages.get(s, 0.0) for s in ("decode_images", "kernel_order", "kernel_prefix_l1", "copies", "encoder",
                                            "decoder", "rest")}
    full["total"] = sum(full.values())
    return {"threads": {"torch": threads, "numba": threads}, "workers": 0,
            "modes": {"decode_only": {"images_per_s": 500.0},
                      "single": {"images_per_s": images_per_s, "stages_ms_per_image": full}}}


def test_projection_fits_amdahl_through_the_entries(throughput):
    import torch

    # Kernels: 1 ms serial + 8 ms parallel; encoder: 2 + 4/n; rest 0.5 serial; decode 3 ms per image.
    def at(n):
        return {"decode_images": 3.0, "kernel_order": 1 + 8 / n, "encoder": 2 + 4 / n, "rest": 0.5}

    pr = throughput.project([_entry(1, at(1)), _entry(2, at(2))], 16, torch.device("cpu"))
    q = pr["modes"]["single"]
    fit = q["fit"]["kernel_order"]
    assert math.isclose(fit["serial_ms"], 1.0) and math.isclose(fit["parallel_ms"], 8.0)
    cpu, gpu = q["cpu"], q["gpu"]
    assert cpu["workers"] == 4 and gpu["workers"] == 15                 # runtime.default_workers on 16 cores
    assert math.isclose(cpu["main_process_ms_per_image"], (1 + 8 / 16) + (2 + 4 / 16) + 0.5)
    assert math.isclose(gpu["main_process_ms_per_image"], (1 + 8 / 16) + 0.5)   # networks off the CPU (CPU-measured: 0)
    assert math.isclose(cpu["bounds_images_per_s"]["loader"], 1000 * 4 / 3.0)
    assert math.isclose(cpu["bounds_images_per_s"]["cores"], 1000 * 16 / (3 + 9 + 6 + 0.5))
    assert cpu["images_per_s"] == min(cpu["bounds_images_per_s"].values())
    assert gpu["bound"] == "main process" and math.isclose(gpu["images_per_s"], 1000 / 2.0)
    # A stage that got slower with threads does not scale: it stays at its slowest.
    slow = throughput.project([_entry(1, {"rest": 1.0}), _entry(2, {"rest": 1.5})], 16, torch.device("cpu"))
    assert math.isclose(slow["modes"]["single"]["cpu"]["stages_ms_per_image"]["rest"], 1.5)
    # One thread count: assumed all parallel, and said so.
    one = throughput.project([_entry(2, {"kernel_order": 4.0})], 16, torch.device("cpu"))
    assert math.isclose(one["modes"]["single"]["cpu"]["stages_ms_per_image"]["kernel_order"], 4.0 * 2 / 16)
    assert one["modes"]["single"]["fit"]["kernel_order"]["how"].startswith("assumed")
    # Measured on CUDA: the networks keep their measured (GPU) time, and there is no CPU-only row.
    cuda = throughput.project([_entry(1, at(1)), _entry(2, at(2))], 16, torch.device("cuda"))
    assert set(cuda["modes"]["single"]) == {"fit", "gpu"}
    assert math.isclose(cuda["modes"]["single"]["gpu"]["stages_ms_per_image"]["encoder"], 2 + 4 / 2)


def test_busy_time_counts_overlapping_intervals_once(throughput):
    assert throughput.busy_us([(0, 10), (5, 15), (20, 25), (21, 22)]) == 20
    assert throughput.busy_us([]) == 0


def test_profile_bad_arguments_exit(throughput, tmp_path):
    for bad in (["--threads-sweep", "0"], ["--threads-sweep", "1,1"], ["--threads-sweep", "a"],
                ["--profile", "--methods", "single"], ["--threads-sweep", "1", "--threads", "2"]):
        with pytest.raises(SystemExit):
            throughput.main([str(tmp_path), "--tiny", *bad])
