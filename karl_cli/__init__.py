"""karl: image complexity from a single-pass adaptive image tokenizer (KARL, arXiv 2507.07995)."""
from karl_cli.models.config import EPS_BINS, KARLConfig, eps_to_bin, preset
from karl_cli.models.tokenizer import KARL, Encoding
from karl_cli.models.pretrained import WeightsError, build_model, load_pretrained

__version__ = "0.1.0"

__all__ = ["EPS_BINS", "KARL", "Encoding", "KARLConfig", "WeightsError", "build_model", "eps_to_bin",
           "load_pretrained", "preset", "__version__"]
