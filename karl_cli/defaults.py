"""Every default of karl, declared once. The library's keyword arguments and the CLI's options (whose
help texts are formatted from these) read them here, so a default cannot say one thing in ``--help``
and do another.
"""
from __future__ import annotations

EPS = 0.05                       # complexity, encode: the ε one KC is reported at (pixel L1, 0-1 scale)
EPS_SERIES = (0.03, 0.05, 0.09)  # show, compare, the studies: strict, default and loose ε side by side
CORRELATE_EPS = 0.03             # correlate: the ε whose KC ranks most like people on Savoias
BATCH_SIZE = 64                  # images per model run when images stream from disk (complexity, encode, correlate)
# compare and the studies hold every image (and compare every reconstruction) in memory: smaller runs
# keep the peak low.
IN_MEMORY_BATCH_SIZE = 32
DEVICE = "auto"                  # CUDA when available, else CPU (runtime.resolve_device)
BOOTSTRAP = 1000                 # resamples of every bootstrap CI
SEED = 0                         # seed of bootstraps, noise, shuffles and subsets
# Halting calibration and distillation (training/calibration.py, training/distil.py):
HALT_THRESHOLDS = (0.75, 0.8, 0.85, 0.9, 0.95)   # the thresholds they choose from, the paper's first
MAX_UNDERCUT = 0.01              # the share of held-out pairs allowed fewer tokens than the reference
SYNTHETIC_SHARE = 0.125          # the share of their crops that are procedural images (flat colours to noise)
