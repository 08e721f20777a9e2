"""Training: the loop (``trainer``), its losses (``objectives``), data, halting calibration and
distillation. Light on purpose: the CLI reads ``RESUME_MAY_CHANGE`` from here for its help text."""

# The resume rule: what a resumed `karl train` may change (everything else is the run's own): its
# length, its wall-clock budget, its workers, compiling and the device.
RESUME_MAY_CHANGE = ("--steps", "--epochs", "--max-minutes", "--workers", "--compile", "--device")
