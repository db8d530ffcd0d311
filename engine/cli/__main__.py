"""`python -m engine.cli`: the `ilsim` command."""

from engine.cli.main import console

console()
