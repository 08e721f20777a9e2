"""Training: the loop (``trainer``), its losses (``objectives``), data, halting calibration and
distillation. The flags of `karl train` and the one resume rule live in ``flags`` (no torch there:
the CLI builds its help from it)."""
