"""Top tokens by confidence rise and by drop at the bottleneck (Figure 3), aggregated per token string."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np


def aggregate_tokens(
    token_ids: np.ndarray, delta: np.ndarray, decode: Callable[[int], str]
) -> list[dict[str, Any]]:
    """Count, mean and sum of Δc per decoded token string (ids that decode alike are merged)."""
    ids, inverse = np.unique(token_ids, return_inverse=True)
    counts = np.bincount(inverse, minlength=len(ids))
    sums = np.bincount(inverse, weights=delta.astype(np.float64), minlength=len(ids))
    merged: dict[str, list[Any]] = {}
    for i, token_id in enumerate(ids.tolist()):
        entry = merged.setdefault(decode(token_id), [0, 0.0, []])
        entry[0] += int(counts[i])
        entry[1] += float(sums[i])
        entry[2].append(token_id)
    return [
        {"token": text, "ids": ids_, "count": count, "mean_delta": total / count, "sum_delta": total}
        for text, (count, total, ids_) in merged.items()
    ]


def top_tokens(rows: Sequence[dict[str, Any]], top: int, min_count: int) -> dict[str, list[dict[str, Any]]]:
    """The `top` strings with the largest mean Δc rise and drop among those seen `min_count` times.

    The mean (not the sum) ranks, as in the paper's "largest confidence change"; the floor on
    occurrences keeps one-off tokens from filling the table with noise.
    """
    frequent = [r for r in rows if r["count"] >= min_count]
    rise = sorted((r for r in frequent if r["mean_delta"] > 0), key=lambda r: (-r["mean_delta"], r["token"]))
    drop = sorted((r for r in frequent if r["mean_delta"] < 0), key=lambda r: (r["mean_delta"], r["token"]))
    return {"rise": rise[:top], "drop": drop[:top]}


def visible(text: str) -> str:
    """A token string with its whitespace made visible (leading spaces matter in BPE vocabularies)."""
    return text.replace(" ", "␣").replace("\n", "⏎").replace("\t", "⇥") or "∅"


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    lines = ["| rank | token | count | mean Δc (nats) | sum Δc (nats) |", "|---:|---|---:|---:|---:|"]
    for rank, r in enumerate(rows, 1):
        token = visible(r["token"]).replace("|", "\\|").replace("`", "ˋ")
        lines.append(
            f"| {rank} | `{token}` | {r['count']} | {r['mean_delta']:+.4f} | {r['sum_delta']:+.3f} |"
        )
    return "\n".join(lines) + "\n"
