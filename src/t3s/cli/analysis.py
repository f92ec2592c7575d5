"""`t3s analyze` and `t3s report`: thin commands over `t3s.analysis.runner` and `t3s.report`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from t3s.cli.console import out
from t3s.cli.options import _pydantic


def analyze(
    run: Annotated[Path, typer.Option("--run", help="run directory (probe and profile done)")],
    what: Annotated[
        str,
        typer.Option(
            help="all, or a comma-separated list of shock, groups, drops, tokens, intervention, "
            "gradients, transfer, separability"
        ),
    ] = "all",
    threshold: Annotated[float, typer.Option(help="anchors are tokens with Δc > threshold")] = 0.0,
    compare: Annotated[
        Path | None,
        typer.Option(
            help="groups: a run directory or profile .parquet scoring checkpoints of a run trained with "
            "anchors masked ('train the other tokens only'), same examples; read with this run's anchors"
        ),
    ] = None,
    examples: Annotated[int, typer.Option(help="examples sampled for the model-side analyses")] = 32,
    max_tokens: Annotated[int, typer.Option(help="tokens kept per sampled example")] = 512,
    batch_tokens: Annotated[int, typer.Option(help="padded tokens per forward pass")] = 4096,
    chunk: Annotated[int, typer.Option(help="positions per output-layer chunk")] = 1024,
    step: Annotated[
        list[int] | None,
        typer.Option("--step", help="analyse this checkpoint only (repeatable; default all)"),
    ] = None,
    params: Annotated[
        str | None, typer.Option(help="regex of parameter names that take gradients (default: all)")
    ] = None,
    lr: Annotated[
        float, typer.Option(help="learning rate of the intervention step and transfer runs")
    ] = 1e-5,
    rule: Annotated[
        str, typer.Option(help="intervention step: adam (a fresh AdamW's first step) or sgd")
    ] = "adam",
    transfer_steps: Annotated[
        int, typer.Option(help="optimizer steps per subset in the transfer matrix")
    ] = 5,
    top: Annotated[int, typer.Option(help="tokens listed per table")] = 100,
    min_count: Annotated[int, typer.Option(help="occurrences a token needs to be ranked")] = 3,
    sketch_dim: Annotated[int, typer.Option(help="dimensions of the token-gradient sketches")] = 256,
    sketch_checkpoint: Annotated[str, typer.Option(help="base, bottleneck or stepK")] = "base",
    device: Annotated[str, typer.Option(help="auto (CUDA when present), cpu, cuda, ...")] = "auto",
    dtype: Annotated[
        str, typer.Option(help="auto: bf16 on GPU (float32 for intervention, transfer), float32 on CPU")
    ] = "auto",
    seed: int = 0,
    trust_remote_code: Annotated[bool, typer.Option(help="allow custom model code from checkpoints")] = False,
) -> None:
    """The paper's analyses of a run: numbers and plots under RUN/analysis/."""
    from t3s.analysis.runner import AnalysisOptions, analyze, parse_names
    from t3s.rundir import RunDir

    names = parse_names(what)
    options = _pydantic(
        AnalysisOptions,
        threshold=threshold,
        compare=compare,
        examples=examples,
        max_tokens=max_tokens,
        batch_tokens=batch_tokens,
        chunk=chunk,
        steps=step or [],
        params=params,
        lr=lr,
        rule=rule,
        transfer_steps=transfer_steps,
        top=top,
        min_count=min_count,
        sketch_dim=sketch_dim,
        sketch_checkpoint=sketch_checkpoint,
        device=device,
        dtype=dtype,
        seed=seed,
        trust_remote_code=trust_remote_code,
    )

    def show(name: str, result: dict[str, object]) -> None:
        if "skipped" in result:
            out.print(f"{name}: skipped ({result['skipped']})", highlight=False, soft_wrap=True)
        else:
            where = RunDir(run).analysis_dir / name
            out.print(
                f"{name}: {json.dumps(result, default=str)} -> {where}.*", highlight=False, soft_wrap=True
            )

    analyze(run, names, options, skip_missing=what.strip() == "all", on_result=show)


def report(
    run: Annotated[
        list[Path],
        typer.Option("--run", help="run directory (repeat to compare runs; the first holds the report)"),
    ],
    out_dir: Annotated[Path | None, typer.Option("--out", "-o", help="default: FIRST_RUN/report")] = None,
) -> None:
    """One self-contained HTML page and a Markdown summary of every curve, table and plot of the runs."""
    from t3s.report import build_report

    result = build_report(run, out_dir)
    for label, numbers in result.headlines.items():
        shown = ", ".join(f"{k} {v}" for k, v in numbers.items())
        out.print(f"{label}: {shown or 'no results yet'}", highlight=False, soft_wrap=True)
    out.print(f"report -> {result.html}", highlight=False, soft_wrap=True)
    out.print(f"summary -> {result.markdown}", highlight=False, soft_wrap=True)
