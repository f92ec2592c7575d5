"""`t3s analyze` and `t3s report`: thin commands over `t3s.api.analyze` and `t3s.api.report`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from t3s import api
from t3s.analysis.options import AnalysisOptions
from t3s.cli.console import out
from t3s.cli.model_options import FromModel


def analyze(
    run: Annotated[Path, typer.Option("--run", help="run directory (probe and profile done)")],
    what: Annotated[
        str,
        typer.Option(
            help="all, or a comma-separated list of shock, groups, drops, tokens, intervention, "
            "gradients, transfer, separability"
        ),
    ] = "all",
    *,
    options: Annotated[AnalysisOptions, FromModel(rename={"steps": "--step"})],
) -> None:
    """The paper's analyses of a run: numbers and plots under RUN/analysis/."""
    from t3s.rundir import RunDir

    def show(name: str, result: dict[str, object]) -> None:
        if "skipped" in result:
            out.print(f"{name}: skipped ({result['skipped']})", highlight=False, soft_wrap=True)
        else:
            where = RunDir(run).analysis_dir / name
            out.print(
                f"{name}: {json.dumps(result, default=str)} -> {where}.*", highlight=False, soft_wrap=True
            )

    api.analyze(run, what, options, on_result=show)


def report(
    run: Annotated[
        list[Path],
        typer.Option("--run", help="run directory (repeat to compare runs; the first holds the report)"),
    ],
    out_dir: Annotated[Path | None, typer.Option("--out", "-o", help="default: FIRST_RUN/report")] = None,
) -> None:
    """One self-contained HTML page and a Markdown summary of every curve, table and plot of the runs."""
    result = api.report(run, out_dir)
    for label, numbers in result.headlines.items():
        shown = ", ".join(f"{k} {v}" for k, v in numbers.items())
        out.print(f"{label}: {shown or 'no results yet'}", highlight=False, soft_wrap=True)
    out.print(f"report -> {result.html}", highlight=False, soft_wrap=True)
    out.print(f"summary -> {result.markdown}", highlight=False, soft_wrap=True)
