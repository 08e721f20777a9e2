"""Errors a user can act on, and the exit codes the CLI maps them to (documented in the README)."""
from __future__ import annotations

EXIT_OK = 0
EXIT_SOME_FAILED = 1      # the job finished, but some inputs became error rows
EXIT_USAGE = 2            # bad arguments: missing paths, bad ε, unknown device, ...
EXIT_FAILED = 3           # the job could not run: unloadable weights, disk full, NaN loss, ...
EXIT_INTERRUPTED = 130    # Ctrl-C; what was done is saved and --resume continues


class KarlError(Exception):
    """An error with a message for the user and an exit code; shown without a traceback."""

    exit_code = EXIT_FAILED


class UsageError(KarlError, ValueError):
    """A bad argument or input, said in one line; a ValueError for Python callers (exit code 2 in the CLI)."""

    exit_code = EXIT_USAGE
