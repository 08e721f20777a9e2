"""`python -m karl_cli ...` runs the `karl` command."""
import sys

try:
    from karl_cli.cli import main
except KeyboardInterrupt:   # Ctrl-C while starting up: no traceback
    sys.stderr.write("interrupted\n")
    raise SystemExit(130) from None

main()
