"""`t3s teacher` (collect, verify and select teacher traces) and `t3s mix` (debiased teacher mixing)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from t3s.cli.console import console, out
from t3s.cli.model_options import FromModel
from t3s.teacher.collect import TeacherSettings


def _num(value: float | None, fmt: str = "{:.0f}") -> str:
    return "-" if value is None else fmt.format(value)


def _summary_table(summary: dict[str, Any]) -> Table:
    table = Table(title=f"teacher traces ({summary['prompts']} prompts)")
    for column in (
        "teacher",
        "model",
        "samples",
        "pass rate",
        "trunc.",
        "kept",
        "dropped",
        "tok. kept",
        "sent",
        "failed",
    ):
        table.add_column(column)
    for name, s in summary["teachers"].items():
        kept_tokens = s["tokens"]["kept"]
        table.add_row(
            name,
            Path(str(s.get("model") or s.get("function") or "-")).name,
            str(s["samples"]),
            _num(s["pass_rate"], "{:.3f}"),
            str(s["truncated"]),
            str(s["kept"]),
            str(s["dropped"]),
            f"{_num(kept_tokens['mean'])}/{_num(kept_tokens['max'])}" if kept_tokens else "-",
            str(s["requested"]),
            str(s["failed"]),
        )
    return table


def teacher(
    prompts: Annotated[
        Path,
        typer.Option(
            "--prompts", "-p", help="id, prompt, answer rows: .jsonl, .parquet or a save_to_disk dir"
        ),
    ],
    teacher: Annotated[
        list[str],
        typer.Option(
            "--teacher",
            "-t",
            help="NAME=http://HOST:PORT/v1, NAME=vllm:PATH, NAME=hf:PATH or NAME=python:MODULE:FUNCTION (repeatable)",
        ),
    ],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="output directory, also the resumable store")],
    teacher_model: Annotated[
        list[str] | None,
        typer.Option(help="[NAME=]MODEL: the served model (default: the endpoint's only model)"),
    ] = None,
    api_key_env: Annotated[
        list[str] | None,
        typer.Option(
            help="[NAME=]VAR: the environment variable holding the API key (default OPENAI_API_KEY)"
        ),
    ] = None,
    *,
    settings: Annotated[TeacherSettings, FromModel()],
) -> None:
    """Sample k traces per prompt from each teacher, verify them, keep one correct trace per prompt."""
    from t3s.teacher.collect import collect_traces
    from t3s.teacher.specs import parse_teachers

    specs = parse_teachers(teacher, teacher_model or [], api_key_env or [])
    summary = collect_traces(prompts, specs, out_dir, settings)
    console.print(_summary_table(summary))
    for name, s in summary["teachers"].items():
        if s["failed"]:
            console.print(
                f"[yellow]warning:[/] teacher {name}: {s['failed']} requests failed "
                f"(first: {s['failures'][0]}); run the command again to retry them",
                highlight=False,
            )
    out.print(f"corpus -> {out_dir / 'corpus.jsonl'}", highlight=False)


def mix(
    run: Annotated[
        list[str], typer.Option("--run", help="[NAME=]RUN: a run built on one teacher's corpus (repeatable)")
    ],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="output masks directory")],
    policy: Annotated[str, typer.Option(help="the masks to concatenate: RUN/masks/<policy>")] = "t3s",
) -> None:
    """Debiased teacher mixing: concatenate per-teacher masked datasets that share the student's tokenizer."""
    from t3s.mixing import mix_masks, parse_source

    stats = mix_masks([parse_source(r) for r in run], policy, out_dir)
    table = Table(title=f"mixed masks ({policy})")
    for column in ("source", "run", "examples", "response tokens", "kept tokens", "kept fraction"):
        table.add_column(column)
    for s in [*stats["sources"], {"name": "total", "run": "", **stats}]:
        table.add_row(
            s["name"],
            s["run"],
            str(s["examples"]),
            str(s["response_tokens"]),
            str(s["kept_tokens"]),
            f"{s['kept_fraction']:.3f}",
        )
    console.print(table)
    out.print(f"mixed masks -> {out_dir}", highlight=False)
