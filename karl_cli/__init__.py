"""karl: image complexity from a single-pass adaptive image tokenizer (KARL, arXiv 2507.07995).

The names below load on first use (PEP 562), so ``karl --help`` and ``karl --version`` start without
importing torch, and a Ctrl-C while the command starts up is handled by the command, not a traceback.
"""
from __future__ import annotations

import importlib
import os
from typing import Any

__version__ = "0.1.0"

# torch's OpenMP threads otherwise spin between parallel regions: when another process holds a core,
# each barrier waits for a descheduled thread and 2 threads on 2 cores ran ~8x slower than 1 (CPU time
# per image 4 -> 30 ms, benchmarks/throughput.py). Sleeping waiters cost little when the cores are
# free. Read when OpenMP loads (with torch), so it holds wherever karl_cli is imported first — always
# for the `karl` command; a user's own OMP_WAIT_POLICY wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

_EXPORTS = {
    "EPS_BINS": "karl_cli.models.config", "KARLConfig": "karl_cli.models.config",
    "eps_to_bin": "karl_cli.models.config", "preset": "karl_cli.models.config",
    "KARL": "karl_cli.models.karl", "ALIT": "karl_cli.models.alit", "Encoding": "karl_cli.models.tokenizer",
    "WeightsError": "karl_cli.models.pretrained", "build_model": "karl_cli.models.pretrained",
    "load_pretrained": "karl_cli.models.pretrained", "load_images": "karl_cli.scoring.measure",
    "measure": "karl_cli.scoring.measure", "list_models": "karl_cli.registry",
    "create_metric": "karl_cli.scoring.metric", "list_metrics": "karl_cli.scoring.metric",
    "KCMetric": "karl_cli.scoring.metric",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'karl_cli' has no attribute {name!r}")
