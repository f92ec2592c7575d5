"""The `t3s` Typer app: every command registered here, explicitly, and `main`.

Command modules define plain functions and never import this module or each other, so the
registration order below is the order of `t3s --help`.
"""

from __future__ import annotations

import sys

import typer

from t3s.cli import analysis, demo, evaluate, stages, teacher
from t3s.cli.console import console
from t3s.errors import T3SError

app = typer.Typer(
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    help="Training-Trajectory-Aware Token Selection for continual distillation of reasoning models.",
)

app.command()(stages.validate)
app.command()(stages.probe)
app.command()(stages.profile)
app.command()(stages.select)
app.command()(stages.export)
app.command()(stages.train)
app.command()(stages.rrt)
app.command(name="run")(stages.run_config)
app.command()(analysis.analyze)
app.command()(analysis.report)
app.command()(demo.demo)
app.command(name="eval")(evaluate.eval_command)
app.command()(teacher.teacher)
app.command()(teacher.mix)


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
