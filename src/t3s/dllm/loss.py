"""The masked-diffusion loss of one micro-batch, as a sum the trainer divides by a global count.

Σ over labelled positions of w_i · (−log p_θ(x_i | x_t)), logits unshifted (position i predicts
token i: the A2D convention, no Dream-style shift). The caller divides by the global count of loss
tokens of the optimizer step (`t3s.dllm.noise.loss_count`), as AR training divides by its kept
tokens, so micro-batch size, accumulation and processes never change the step.
"""

from __future__ import annotations

import torch

from t3s.masks import IGNORE


def weighted_token_nll_sum(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Σ_i w_i · CE(logits_i, labels_i) over positions whose label is not IGNORE, in float32."""
    keep = labels != IGNORE
    if not keep.any():
        return logits.sum() * 0.0  # keeps the graph: an all-unmasked micro-batch contributes zero gradient
    nll = torch.nn.functional.cross_entropy(logits[keep].float(), labels[keep], reduction="none")
    return (nll * weights[keep].float()).sum()
