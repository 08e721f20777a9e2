"""`python -m karl_cli ...` runs the `karl` command."""
from karl_cli.cli import main

main()
