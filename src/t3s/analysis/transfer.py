"""The loss-transfer matrix (Table 6): train from θ0 on one token subset, measure all four subsets' losses.

Anchors and the other tokens are each split into an easy and a hard half by base confidence
c(θ0) (hard = the lower-confidence half, by rank, so the halves are equal up to one token).
Each subset is trained alone with a plain AdamW loop on the sampled tokens (every step uses the
whole sample: the gradient of the subset's mean token loss, clipped to norm 1 like the probe's
recipe); a Trainer would add nothing here since the mask, not the data, changes between runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from t3s.analysis.tokenloss import TokenSample, backward_weighted, group_losses
from t3s.errors import T3SError

SUBSETS = ("anchor-easy", "anchor-hard", "other-easy", "other-hard")


def transfer_labels(anchors: np.ndarray, base_logprob: np.ndarray) -> np.ndarray:
    """Label 0-3 (the order of SUBSETS) for each token: group, then easy/hard half by c(θ0)."""
    labels = np.empty(len(anchors), dtype=np.int64)
    for offset, members in ((0, np.flatnonzero(anchors)), (2, np.flatnonzero(~anchors))):
        if len(members) < 2:
            group = "anchor" if offset == 0 else "other"
            raise T3SError(f"the loss-transfer matrix needs at least 2 {group} tokens; sample more examples")
        ranked = members[np.argsort(base_logprob[members], kind="stable")]
        hard = ranked[: len(ranked) // 2]
        labels[members] = offset
        labels[hard] = offset + 1
    return labels


def train_subset(
    model: Any,
    sample: TokenSample,
    subset: int,
    *,
    steps: int,
    lr: float,
    batch_tokens: int,
    chunk: int,
    betas: tuple[float, float] = (0.9, 0.95),
    max_grad_norm: float = 1.0,
) -> None:
    """`steps` AdamW steps on subset `subset`'s mean token loss (labels elsewhere count for nothing)."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=0.0)
    weights = np.zeros(sample.n_groups)
    weights[subset] = 1.0 / int(sample.counts()[subset])
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        backward_weighted(model, sample, weights, batch_tokens=batch_tokens, chunk=chunk)
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        optimizer.step()


def transfer_matrix(
    load_base: Callable[[], Any], sample: TokenSample, *, steps: int, lr: float, batch_tokens: int, chunk: int
) -> dict[str, Any]:
    """matrix[i][j]: % change of subset j's mean loss after training on subset i from θ0.

    `load_base` returns a fresh θ0 with the trainable parameters chosen.
    """
    model = load_base()
    base = group_losses(model, sample, batch_tokens=batch_tokens, chunk=chunk)
    matrix, losses = [], []
    for subset in range(len(SUBSETS)):
        if subset:
            model = load_base()
        train_subset(model, sample, subset, steps=steps, lr=lr, batch_tokens=batch_tokens, chunk=chunk)
        after = group_losses(model, sample, batch_tokens=batch_tokens, chunk=chunk)
        losses.append(after.tolist())
        matrix.append((100.0 * (after - base) / base).tolist())
    del model
    return {
        "subsets": list(SUBSETS),
        "tokens": sample.counts().tolist(),
        "base_loss": base.tolist(),
        "loss_after": losses,
        "matrix_percent": matrix,
        "steps": steps,
        "lr": lr,
    }
