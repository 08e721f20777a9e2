"""The flags of ``karl train`` that describe a run, and the one rule of what ``--resume`` may change.

A resumed run keeps its model (``SIZE_FLAGS``, ``--preset``) and its recipe (``RECIPE_FLAGS``): it
continues the same schedule, so the weights come out as an uninterrupted run's would. It takes from
the new invocation only what belongs to one invocation or sets where the run ends (``RESUME_MAY_CHANGE``
and ``--device``). The check (``trainer.resume_conflicts``, ``trainer.train``), its error and
``karl train --help`` all read ``RESUME_RULE``. No torch here: the CLI builds its help from this.
"""
from __future__ import annotations

# TrainConfig fields a resumed run keeps (its recipe), with the flag that sets each.
RECIPE_FLAGS = {"batch_size": "--batch-size", "lr": "--lr", "warmup_steps": "--warmup", "seed": "--seed",
                "checkpoint_every": "--checkpoint-every", "cache": "--cache/--no-cache"}
# KARLConfig fields that `karl train` sets by flag.
SIZE_FLAGS = {"arch": "--arch", "max_tokens": "--max-tokens", "token_step": "--token-step", "code": "--code"}
# TrainConfig fields a resumed run takes from the new invocation: its length, the time budget and
# compilation of this process, and the loader workers (none changes the computed weights).
RESUME_MAY_CHANGE = {"steps": "--steps", "epochs": "--epochs", "max_minutes": "--max-minutes",
                     "workers": "--workers", "compile": "--compile"}
# ... and the device, an argument of the run rather than part of its recipe.
RESUME_MAY_CHANGE_FLAGS = (*RESUME_MAY_CHANGE.values(), "--device")
RESUME_RULE = ("a resumed run keeps its model and recipe: only " + ", ".join(RESUME_MAY_CHANGE_FLAGS[:-1])
               + " and " + RESUME_MAY_CHANGE_FLAGS[-1] + " may change")
