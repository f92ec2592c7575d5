"""Gradient dynamics between anchors and the other tokens (Figure 6) and the one-step intervention (Figure 5).

Both work on one loaded checkpoint and a `TokenSample` labelled OTHER (0) / ANCHOR (1). A group
gradient is the gradient of that group's mean token loss over the whole sample.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch

from t3s.analysis.tokenloss import TokenSample, group_gradient, group_losses

OTHER, ANCHOR = 0, 1
Rule = Literal["adam", "sgd"]


def gradient_stats(model: Any, sample: TokenSample, *, batch_tokens: int, chunk: int) -> dict[str, float]:
    """‖g_anchor‖, ‖g_other‖, their ratio and cosine (over the trainable parameters), and both losses."""
    g_anchor, loss_anchor = group_gradient(model, sample, ANCHOR, batch_tokens=batch_tokens, chunk=chunk)
    g_other, loss_other = group_gradient(model, sample, OTHER, batch_tokens=batch_tokens, chunk=chunk)
    aa = oo = ao = 0.0
    for a, o in zip(g_anchor, g_other, strict=True):
        a, o = a.float(), o.float()
        aa += float((a * a).sum())
        oo += float((o * o).sum())
        ao += float((a * o).sum())
    norm_a, norm_o = math.sqrt(aa), math.sqrt(oo)
    return {
        "anchor_grad_norm": norm_a,
        "other_grad_norm": norm_o,
        "norm_ratio": norm_a / norm_o if norm_o > 0 else math.inf,
        "cosine": ao / (norm_a * norm_o) if norm_a > 0 and norm_o > 0 else math.nan,
        "anchor_loss": loss_anchor,
        "other_loss": loss_other,
    }


def step_direction(grad: torch.Tensor, rule: Rule) -> torch.Tensor:
    """The update direction of one step: the gradient (SGD), or a fresh AdamW's first step.

    AdamW's first update from zero moments, bias-corrected, is g / (|g| + eps): the gradient's sign
    up to eps, whatever its scale. With rule 'adam' one step at the training lr therefore moves the
    weights as much as the first step of the probe's own optimizer would.
    """
    g = grad.float()
    return g / (g.abs() + 1e-8) if rule == "adam" else g


def anchor_step(
    model: Any, sample: TokenSample, *, lr: float, rule: Rule, batch_tokens: int, chunk: int
) -> dict[str, float]:
    """One gradient step on the anchors' mean loss only; the losses of both groups before and after.

    The model's trainable weights are changed in place (the caller loads a fresh checkpoint next).
    """
    before = group_losses(model, sample, batch_tokens=batch_tokens, chunk=chunk)
    grads, _ = group_gradient(model, sample, ANCHOR, batch_tokens=batch_tokens, chunk=chunk)
    params = [p for p in model.parameters() if p.requires_grad]
    with torch.no_grad():
        for p, g in zip(params, grads, strict=True):
            p.sub_((lr * step_direction(g, rule)).to(p.dtype))
    after = group_losses(model, sample, batch_tokens=batch_tokens, chunk=chunk)
    return {
        "anchor_loss": float(before[ANCHOR]),
        "other_loss": float(before[OTHER]),
        "anchor_loss_after": float(after[ANCHOR]),
        "other_loss_after": float(after[OTHER]),
        "delta_other_loss": float(after[OTHER] - before[OTHER]),
        "delta_anchor_loss": float(after[ANCHOR] - before[ANCHOR]),
    }
