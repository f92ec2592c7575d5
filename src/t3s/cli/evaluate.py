"""`t3s eval`: score a model, a probe trajectory or trained policies on a benchmark."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from t3s import api
from t3s.cli.console import console, out
from t3s.cli.model_options import FromModel
from t3s.errors import T3SError
from t3s.evaluation import EvalSettings

EVAL_SETTINGS = FromModel(
    rename={"max_new_tokens": "--max-tokens"},
    help={"template": "auto, chat or plain; with --run, the run's own unless given"},
)


def _metrics_table(title: str, metrics: dict[str, Any]) -> Table:
    """One model: every score with its standard error, then the token counts."""
    table = Table(title=title)
    for column in ("metric", "mean", "stderr"):
        table.add_column(column, justify="right")
    for name, value in metrics.items():
        if "@" in name and not name.endswith("_stderr"):
            se = metrics[f"{name}_stderr"]
            table.add_row(name, f"{value:.4f}", "-" if se is None else f"{se:.4f}")
    table.add_row("tokens", f"{metrics['tokens']:,}", "")
    table.add_row("truncated", f"{metrics['truncated']:.1%}", "")
    table.add_row("verifier errors", str(metrics["verifier_errors"]), "")
    return table


def _curve_table(title: str, key: str, rows: list[dict[str, Any]]) -> Table:
    """Several models: the headline scores over all n samples, one row each."""
    n = rows[0]["samples"]
    table = Table(title=title)
    columns = (f"avg@{n}", f"maj@{n}", f"pass@{n}")
    for column in (key, *columns, "tokens", "truncated", "verifier errors"):
        table.add_column(column, justify="right")
    for r in rows:
        cells = []
        for metric in columns:
            se = r[f"{metric}_stderr"]
            cells.append(f"{r[metric]:.3f}" + ("" if se is None else f" ± {se:.3f}"))
        table.add_row(
            str(r[key]), *cells, f"{r['tokens']:,}", f"{r['truncated']:.1%}", str(r["verifier_errors"])
        )
    return table


def eval_command(
    bench: Annotated[
        Path,
        typer.Option(
            "--bench",
            "-b",
            help="benchmark: id, problem (text or messages), answer; .jsonl, .parquet or saved dataset",
        ),
    ],
    model: Annotated[str | None, typer.Option("--model", "-m", help="checkpoint directory to score")] = None,
    out_path: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="with --model: X.json (summary) + X.samples.jsonl beside it, or a directory "
            "holding results.json + samples.jsonl",
        ),
    ] = None,
    run: Annotated[
        Path | None,
        typer.Option(
            "--run",
            help="score θ0 and every probe checkpoint on disk into RUN/eval/<bench>/ "
            "(step-NNNNN.json, step-NNNNN.samples.jsonl, curve.jsonl)",
        ),
    ] = None,
    step: Annotated[
        list[int] | None, typer.Option("--step", help="with --run: only this step (repeatable; 0 = θ0)")
    ] = None,
    policy: Annotated[
        str | None,
        typer.Option(
            help="with --run: score RUN/train/<policy>/model instead, e.g. sft,t3s or all "
            "(policy-<name>.json and policies.jsonl)"
        ),
    ] = None,
    *,
    settings: Annotated[EvalSettings, EVAL_SETTINGS],
) -> None:
    """Score a model on a benchmark: avg@n, pass@k (unbiased), maj@k ± standard error, generated tokens.

    With --model, --out X.json gets the summary and X.samples.jsonl every sample (problem id, sample index, completion, extracted answer, verdict, tokens, finish reason). With --run, RUN/eval/<bench>/ gets step-NNNNN.json + step-NNNNN.samples.jsonl per checkpoint and curve.jsonl (or policy-<name>.* and policies.jsonl).

    Samples are saved as they are produced: after a kill, the same command generates only what is missing. Other models or sampling settings fill their own key space in the same samples file.
    """
    from t3s.evaluation import load_bench
    from t3s.rundir import RunDir

    if (model is None) == (run is None):
        raise T3SError("pass either --model (with --out) or --run")
    if model is not None and out_path is None:
        raise T3SError("--model needs --out (X.json, or a directory)")
    if run is not None and out_path is not None:
        raise T3SError("--run writes into RUN/eval/<bench>/; drop --out")
    if model is not None and (step or policy):
        raise T3SError("--step and --policy select models of a run; use them with --run")
    if step and policy:
        raise T3SError("--step selects probe checkpoints, --policy trained models; pass one of them")
    data = load_bench(bench)
    if model is not None:
        assert out_path is not None
        summary = api.evaluate_model(model, data, out_path, settings)
        title = (
            f"{model} on {data.name}: {summary['problems']} problems x {summary['samples']} samples, "
            f"maj@k grouped by {summary['maj_grouping']}"
        )
        console.print(_metrics_table(title, summary["metrics"]))
        out.print(f"results -> {out_path}", highlight=False)
        return
    assert run is not None
    policies = [p.strip() for p in policy.split(",") if p.strip()] if policy else None
    rows = api.evaluate(run, data, settings, steps=step, policies=policies)
    key = "policy" if policies else "step"
    title = f"{data.name}: {rows[0]['problems']} problems, maj@k grouped by {rows[0]['maj_grouping']}"
    console.print(_curve_table(title, key, rows))
    out.print(f"results -> {RunDir(run).eval_dir(data.name)}", highlight=False)
