"""Imitation Shock curves: loss, training accuracy and benchmark accuracy per checkpoint, θb marked."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def shock_curves(
    metrics: Sequence[dict[str, Any]],
    bottleneck: dict[str, Any] | None,
    benchmarks: dict[str, dict[str, list[tuple[int, float]]]],
) -> dict[str, Any]:
    """One aligned series per probe metric (None where a row lacks it), plus benchmark curves.

    `train_loss` is the optimizer's loss logged at that step (none at step 0);
    `teacher_forced_loss` is the mean NLL per response token of the evaluated prompts.
    """
    rows = sorted(metrics, key=lambda r: r["step"])
    keys = ("train_loss", "teacher_forced_loss", "train_accuracy", "mean_tokens", "truncated", "wall_time")
    out: dict[str, Any] = {"steps": [r["step"] for r in rows]}
    for key in keys:
        out[key] = [r.get(key) for r in rows]
    accuracy = [(r["step"], r["train_accuracy"]) for r in rows if r.get("train_accuracy") is not None]
    base = next((a for s, a in accuracy if s == 0), None)
    if bottleneck is not None:
        out["bottleneck_step"] = bottleneck.get("step")
        out["bottleneck_accuracy"] = bottleneck.get("train_accuracy")
    out["base_accuracy"] = base
    out["final_accuracy"] = accuracy[-1][1] if accuracy else None
    if base is not None and out.get("bottleneck_accuracy") is not None:
        out["crash"] = out["bottleneck_accuracy"] - base
    out["benchmarks"] = {
        bench: {metric: [list(p) for p in points] for metric, points in curves.items()}
        for bench, curves in benchmarks.items()
    }
    return out
