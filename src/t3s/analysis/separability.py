"""Static separability (Figures 11-12): can base confidence or token gradients alone tell anchors apart?

Per-token gradient sketches: for each sampled token t, the gradient of its own loss -log p(x_t)
with respect to the hidden state fed to the output layer (each position's loss depends only on
its own row there, so one backward per chunk yields every token's gradient at once), projected
to `dim` dimensions with a seeded Gaussian matrix. This is the output-layer input's gradient,
not the paper's LoRA-parameter JVP sketch: it is cheap at any model size and measures the same
thing, whether the two groups pull the model in distinguishable directions.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from t3s.analysis.tokenloss import TokenSample, batch_hidden, batches
from t3s.confidence import gather_logprobs


def auroc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """Area under the ROC curve of `scores` for the positive class (Mann-Whitney, ties averaged).

    0.5: the score does not separate the classes; 0 or 1: it separates them perfectly.
    """
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if not n_pos or not n_neg:
        return None
    order = np.argsort(scores, kind="stable")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    # Average ranks over ties.
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    ranks[order] = np.repeat(first + (counts + 1) / 2.0, counts)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def confidence_histogram(base_logprob: np.ndarray, anchors: np.ndarray, bins: int = 40) -> dict[str, Any]:
    """Density histograms of c(θ0) (nats) for anchors and the others, and the AUROC of c(θ0)."""
    edges = np.histogram_bin_edges(base_logprob, bins=bins)
    out: dict[str, Any] = {"edges": edges.tolist(), "auroc_base_confidence": auroc(base_logprob, anchors)}
    for name, members in (("anchor", anchors), ("other", ~anchors)):
        density, _ = np.histogram(base_logprob[members], bins=edges, density=bool(members.any()))
        out[f"{name}_density"] = density.tolist()
    return out


def gradient_sketches(
    model: Any, sample: TokenSample, *, dim: int, seed: int, batch_tokens: int, chunk: int
) -> tuple[np.ndarray, np.ndarray]:
    """Sketches [tokens, dim] (float32) of per-token output-layer-input gradients, and their labels."""
    device = next(model.parameters()).device
    hidden_size = model.get_output_embeddings().weight.shape[1]
    generator = torch.Generator().manual_seed(seed)
    projection = (torch.randn(hidden_size, dim, generator=generator) / dim**0.5).to(device)
    sketches, labels = [], []
    for batch in batches(sample, batch_tokens):
        with torch.no_grad():
            hidden, targets, batch_labels = batch_hidden(model, sample, batch)
        labels.append(batch_labels.cpu().numpy())
        for s in range(0, len(targets), chunk):
            h = hidden[s : s + chunk].detach().requires_grad_(True)
            loss = -gather_logprobs(model, h, targets[s : s + chunk], chunk).sum()
            (grad,) = torch.autograd.grad(loss, h)
            sketches.append((grad.float() @ projection).cpu().numpy())
    return np.concatenate(sketches), np.concatenate(labels)


def pca2(x: np.ndarray) -> tuple[np.ndarray, list[float]]:
    """The first two principal components of the rows of `x` and their shares of the variance."""
    centered = x - x.mean(axis=0, keepdims=True)
    _, s, vt = np.linalg.svd(centered, full_matrices=False)
    variance = s**2
    share = (variance[:2] / variance.sum()).tolist() if variance.sum() > 0 else [0.0, 0.0]
    return centered @ vt[:2].T, share


def mean_direction_auroc(x: np.ndarray, anchors: np.ndarray) -> float | None:
    """AUROC of the projection on the difference of the group means (in-sample, so optimistic)."""
    if not anchors.any() or anchors.all():
        return None
    direction = x[anchors].mean(axis=0) - x[~anchors].mean(axis=0)
    return auroc(x @ direction, anchors)
