"""What a benchmark figure was measured on: every benchmark's JSON names its machine with this.

    python benchmarks/machine.py [--device cuda]    # the same facts as JSON, e.g. beside a quoted figure
"""
from __future__ import annotations

import argparse
import json
import os
import platform

import torch

from karl_cli import __version__


def machine_info(device: str | torch.device = "cpu") -> dict:
    """What a benchmark figure was measured on: CPU model, cores, threads, device, versions."""
    cpu = platform.processor() or platform.machine() or "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.lower().startswith("model name")), cpu)
    except OSError:
        pass
    dev = torch.device(device)
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(dev),
        "torch": torch.__version__,
        "karl": __version__,
        "python": platform.python_version(),
        "nice": os.nice(0) if hasattr(os, "nice") else 0,
    }
    if dev.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(dev)
    return info


def main() -> None:
    p = argparse.ArgumentParser(description="Print the machine facts every benchmark records, as JSON.")
    p.add_argument("--device", default="cpu", help="Device to describe (cpu, cuda, cuda:N).")
    print(json.dumps(machine_info(p.parse_args().device), indent=2))


if __name__ == "__main__":
    main()
