"""`python -m engine.cli`: the `ilsim` command."""

from engine.cli.main import main

raise SystemExit(main())
