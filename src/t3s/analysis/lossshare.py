"""Where θ0's teacher-forced loss sits: in the tokens a policy keeps, by Δc band, by token class.

A masked objective learns only from the loss its kept tokens carry. T3S drops the anchors (Δc > 0),
the tokens whose confidence rose first; when what is left carries almost none of θ0's loss (the
testbed's T3S kept 0.4% of it), retraining has almost nothing left to learn. All of it is read off
the profile (logprob_base and Δc), before any retraining.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np

from t3s.masks import is_anchor

# Below this share of θ0's loss on the kept tokens, `t3s select` warns.
LOW_LOSS_SHARE = 0.05
# Δc bands (nats) of the loss table: the anchor threshold 0, the paper's τ = 0.2, then rising orders.
BAND_EDGES = (-0.2, 0.0, 0.5, 2.0, 5.0)
CLASSES = ("format", "digits", "words")


def token_class(text: str) -> str:
    """`digits` if the token has a digit, `format` if it has no letter or digit (whitespace,
    punctuation, markup), else `words`.

    >>> [token_class(t) for t in ["\\n\\n", " 128", " Then", "**", " x2"]]
    ['format', 'digits', 'words', 'format', 'digits']
    """
    if any(ch.isdigit() for ch in text):
        return "digits"
    if not any(ch.isalpha() for ch in text):
        return "format"
    return "words"


def loss_share(nll: np.ndarray, kept: np.ndarray) -> float:
    """The share of the summed loss `nll` on the `kept` tokens (NaN-free arrays, same length).

    >>> loss_share(np.array([1.0, 3.0]), np.array([True, False]))
    0.25
    """
    total = float(nll.sum())
    return float(nll[kept].sum()) / total if total > 0 else float("nan")


def kept_loss_share(profile: Any, keeps: Sequence[np.ndarray]) -> float | None:
    """θ0's loss share on the kept tokens of per-example keep masks over a profile table.

    None when the table has no θ0 log-probs (plain SFT masks made from the tokens alone).
    """
    if "logprob_base" not in profile.column_names:
        return None
    nll, kept = [], []
    for logprob, keep in zip(profile.column("logprob_base").to_pylist(), keeps, strict=True):
        values = -np.asarray(logprob, dtype=np.float64)
        scored = np.isfinite(values)
        nll.append(values[scored])
        kept.append(np.asarray(keep, dtype=bool)[scored])
    return loss_share(np.concatenate(nll), np.concatenate(kept))


def low_share_warning(policy: str, share: float | None) -> str | None:
    if share is None or not share < LOW_LOSS_SHARE:
        return None
    return (
        f"policy {policy} keeps tokens that carry {share:.1%} of θ0's teacher-forced loss "
        f"(under {LOW_LOSS_SHARE:.0%}): the masked objective has almost nothing left to learn"
    )


def _band_labels() -> list[str]:
    edges = [f"{e:g}" for e in BAND_EDGES]
    return [
        f"≤ {edges[0]}",
        *(f"({a}, {b}]" for a, b in itertools.pairwise(edges)),
        f"> {edges[-1]}",
    ]


def delta_bands(delta: np.ndarray, nll: np.ndarray) -> list[dict[str, Any]]:
    """Per Δc band: its share of the tokens, of θ0's loss, and θ0's mean loss per token."""
    band = np.searchsorted(np.asarray(BAND_EDGES), delta, side="left")  # a band's upper edge is in it
    total = float(nll.sum())
    rows = []
    for i, label in enumerate(_band_labels()):
        inside = band == i
        n = int(inside.sum())
        rows.append(
            {
                "band": label,
                "tokens": n,
                "token_share": n / len(delta),
                "loss_share": float(nll[inside].sum()) / total if total > 0 else None,
                "mean_nll": float(nll[inside].mean()) if n else None,
            }
        )
    return rows


def by_class(
    delta: np.ndarray, nll: np.ndarray, classes: np.ndarray, threshold: float
) -> list[dict[str, Any]]:
    """Per token class: shares of tokens and of θ0's loss, the anchor share and Δc's distribution."""
    total = float(nll.sum())
    rows = []
    for name in CLASSES:
        inside = classes == name
        n = int(inside.sum())
        d = delta[inside]
        rows.append(
            {
                "class": name,
                "tokens": n,
                "token_share": n / len(delta),
                "loss_share": float(nll[inside].sum()) / total if total > 0 else None,
                "anchor_share": float(is_anchor(d, threshold).mean()) if n else None,
                "mean_delta": float(d.mean()) if n else None,
                "quantiles": {
                    q: float(v)
                    for q, v in zip(("p10", "p50", "p90"), np.quantile(d, [0.1, 0.5, 0.9]), strict=True)
                }
                if n
                else None,
            }
        )
    return rows
