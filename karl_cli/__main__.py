"""`python -m karl_cli ...` runs the `karl` command."""
try:
    from karl_cli.cli import main
except KeyboardInterrupt:   # Ctrl-C while starting up: no traceback
    raise SystemExit(130) from None

main()
