"""karl: image complexity from a single-pass adaptive image tokenizer (KARL, arXiv 2507.07995)."""
from karl_cli.models import (ALIT, EPS_BINS, KARL, Encoding, KARLConfig, WeightsError, build_model, eps_to_bin,
                             load_pretrained, preset)

__version__ = "0.1.0"

__all__ = ["ALIT", "EPS_BINS", "KARL", "Encoding", "KARLConfig", "WeightsError", "build_model", "eps_to_bin",
           "load_pretrained", "preset", "__version__"]
