"""The three models (docs/design.md §1): KARL on the wavelet code, KARL with learned tokens, ALIT.
Importing this package registers both model classes with the weights loader."""
from karl_cli.models.alit import ALIT
from karl_cli.models.config import EPS_BINS, MODELS, KARLConfig, eps_to_bin, preset
from karl_cli.models.karl import KARL
from karl_cli.models.pretrained import WeightsError, build_model, load_pretrained, model_id
from karl_cli.models.tokenizer import Encoding, Tokenizer

__all__ = ["ALIT", "EPS_BINS", "Encoding", "KARL", "KARLConfig", "MODELS", "Tokenizer", "WeightsError",
           "build_model", "eps_to_bin", "load_pretrained", "model_id", "preset"]
