"""`lint-imports` (import-linter's command line) in a process of its own, for
tests/test_architecture.py, which points it at a copy of the package through PYTHONPATH:
`python tests/children/lint_imports.py [lint-imports options]`."""

from __future__ import annotations

from importlinter.cli import lint_imports_command

if __name__ == "__main__":
    lint_imports_command()
