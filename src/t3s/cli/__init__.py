"""The `t3s` command line: the Typer app and `main` (in `t3s.cli.app`), one module per group of commands."""

from t3s.cli.app import app, main

__all__ = ["app", "main"]
