"""The `t3s` Typer app: every command registered here, explicitly, and `main`.

Command modules define plain functions and never import this module or each other; a parameter
annotated with a settings model (`FromModel`) is spread into one option per setting by
`settings_command`. The order below is the order of `t3s --help`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import typer

from t3s.cli import analysis, demo, evaluate, stages, teacher
from t3s.cli.console import console
from t3s.cli.model_options import settings_command
from t3s.errors import T3SError

app = typer.Typer(
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    help="Training-Trajectory-Aware Token Selection for continual distillation of reasoning models.",
)


def _register(func: Callable[..., Any], name: str | None = None) -> None:
    app.command(name=name)(settings_command(func))


_register(stages.validate)
_register(stages.probe)
_register(stages.profile)
_register(stages.select)
_register(stages.export)
_register(stages.train)
_register(stages.rrt)
_register(stages.run_config, "run")
_register(analysis.analyze)
_register(analysis.report)
_register(demo.demo)
_register(evaluate.eval_command, "eval")
_register(teacher.teacher)
_register(teacher.mix)


def main() -> None:
    try:
        app()
    except T3SError as exc:
        # Plain print: one line, never wrapped to the terminal width.
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        console.print("interrupted; run the same command again to resume")
        sys.exit(130)
