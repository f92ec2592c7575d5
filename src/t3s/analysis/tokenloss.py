"""Token-group losses and their gradients, memory-bounded: the building block of the model-side analyses.

A `TokenSample` is a seeded sample of profile examples, each cut to at most `max_tokens` tokens,
with a group label per scored position (-1: in no group). Losses are per-token NLLs
-log p(x_i | x_<i) at those positions, computed with `t3s.confidence`'s `hidden_states` and
`gather_logprobs`: examples are packed into batches of at most `batch_tokens` padded tokens, and
the output layer sees `chunk` positions at a time. When gradients are needed each chunk runs
under activation checkpointing, so the backward pass too holds one chunk's logits, not all of
them. Gradients go to the parameters' `.grad`, as in training; which parameters take part is
decided by their `requires_grad` (see `select_parameters`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.checkpoint import checkpoint

from t3s.analysis.artifacts import Profile
from t3s.confidence import batches_by_tokens, gather_logprobs, hidden_states
from t3s.errors import T3SError


@dataclass(frozen=True)
class TokenSample:
    input_ids: list[np.ndarray]
    positions: list[np.ndarray]
    labels: list[np.ndarray]
    n_groups: int

    def counts(self) -> np.ndarray:
        labels = np.concatenate(self.labels) if self.labels else np.zeros(0, dtype=np.int64)
        return np.bincount(labels[labels >= 0], minlength=self.n_groups)


def sample_examples(n_examples: int, k: int, seed: int) -> list[int]:
    """A seeded subset of `k` example indices (all of them when k >= n), in corpus order."""
    if k >= n_examples:
        return list(range(n_examples))
    return sorted(np.random.default_rng(seed).choice(n_examples, size=k, replace=False).tolist())


def in_sample(profile: Profile, examples: Sequence[int], max_tokens: int) -> np.ndarray:
    """Mask over the profile's scored tokens: those of `examples` before position `max_tokens`."""
    return np.isin(profile.example, np.asarray(examples)) & (profile.position < max_tokens)


def token_sample(
    profile: Profile, labels: np.ndarray, n_groups: int, examples: Sequence[int], max_tokens: int
) -> TokenSample:
    """Group labels (one per scored profile token) gathered for `examples`, cut at `max_tokens`."""
    ids, positions, groups = [], [], []
    keep = in_sample(profile, examples, max_tokens)
    for e in examples:
        rows = keep & (profile.example == e)
        if not rows.any():
            continue
        pos = profile.position[rows]
        ids.append(profile.input_ids[e][: int(pos.max()) + 1])
        positions.append(pos)
        groups.append(labels[rows].astype(np.int64))
    sample = TokenSample(ids, positions, groups, n_groups)
    if not sample.input_ids:
        raise T3SError("the sampled examples have no scored token; sample more examples or raise max_tokens")
    return sample


def select_parameters(model: Any, pattern: str | None) -> list[tuple[str, torch.nn.Parameter]]:
    """Parameters whose name matches the regex `pattern` (all when None) take gradients; others are frozen.

    Restricting them (e.g. to the last layers) bounds the memory of gradients and updates.
    """
    chosen = []
    for name, p in model.named_parameters():
        keep = pattern is None or re.search(pattern, name) is not None
        p.requires_grad_(keep)
        if keep:
            chosen.append((name, p))
    if not chosen:
        raise T3SError(f"--params {pattern!r} matches no parameter of {type(model).__name__}")
    return chosen


def _checkpointed_logprobs(
    model: Any, hidden: torch.Tensor, targets: torch.Tensor, chunk: int
) -> torch.Tensor:
    parts = [
        checkpoint(
            gather_logprobs, model, hidden[s : s + chunk], targets[s : s + chunk], chunk, use_reentrant=False
        )
        for s in range(0, targets.shape[0], chunk)
    ]
    return torch.cat(parts)


def batch_hidden(
    model: Any, sample: TokenSample, batch: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For the labelled positions of the examples in `batch`: the hidden states that predict them
    (rows of the output layer's input), their target ids and their group labels."""
    device = next(model.parameters()).device
    width = max(len(sample.input_ids[i]) for i in batch)
    ids = torch.zeros((len(batch), width), dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    rows, cols, labels = [], [], []
    for b, i in enumerate(batch):
        ids[b, : len(sample.input_ids[i])] = torch.from_numpy(sample.input_ids[i].astype(np.int64))
        mask[b, : len(sample.input_ids[i])] = 1
        keep = sample.labels[i] >= 0
        rows.extend([b] * int(keep.sum()))
        cols.extend(sample.positions[i][keep].tolist())
        labels.extend(sample.labels[i][keep].tolist())
    ids, mask = ids.to(device), mask.to(device)
    r, c = torch.tensor(rows, device=device), torch.tensor(cols, device=device)
    hidden = hidden_states(model, ids, mask)[r, c - 1]
    return hidden, ids[r, c], torch.tensor(labels, device=device)


def batch_logprobs(
    model: Any, sample: TokenSample, batch: Sequence[int], chunk: int, *, grad: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs (float32) and group labels of the labelled positions of the examples in `batch`."""
    hidden, targets, labels = batch_hidden(model, sample, batch)
    if grad:
        return _checkpointed_logprobs(model, hidden, targets, chunk), labels
    return gather_logprobs(model, hidden, targets, chunk), labels


def batches(sample: TokenSample, batch_tokens: int, weights: np.ndarray | None = None) -> Iterator[list[int]]:
    """Batches of the examples holding a labelled position (with a non-zero weight, when given)."""
    active = []
    for labels in sample.labels:
        labels = labels[labels >= 0]
        active.append(bool(labels.size) and (weights is None or bool(np.any(weights[labels] != 0))))
    lengths = [len(x) if a else 0 for x, a in zip(sample.input_ids, active, strict=True)]
    for batch in batches_by_tokens(lengths, batch_tokens):
        batch = [i for i in batch if active[i]]
        if batch:
            yield batch


def group_losses(model: Any, sample: TokenSample, *, batch_tokens: int, chunk: int) -> np.ndarray:
    """Mean per-token loss (nats) of each group; NaN for an empty group."""
    sums = torch.zeros(sample.n_groups, dtype=torch.float64)
    with torch.inference_mode():
        for batch in batches(sample, batch_tokens):
            values, labels = batch_logprobs(model, sample, batch, chunk, grad=False)
            sums.index_add_(0, labels.cpu(), -values.double().cpu())
    counts = sample.counts()
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums.numpy() / np.maximum(counts, 1), np.nan)


def backward_weighted(
    model: Any, sample: TokenSample, weights: Sequence[float], *, batch_tokens: int, chunk: int
) -> float:
    """Accumulate into `.grad` the gradient of sum_t weights[group_t] * NLL_t; returns that loss.

    With weights = one-hot(g) / |g| this is the gradient of group g's mean token loss, computed
    over the whole sample however it is split into batches.
    """
    w = np.asarray(weights, dtype=np.float32)
    total = 0.0
    for batch in batches(sample, batch_tokens, w):
        values, labels = batch_logprobs(model, sample, batch, chunk, grad=True)
        loss = -(values * torch.from_numpy(w).to(values.device)[labels]).sum()
        loss.backward()
        total += float(loss.detach())
    return total


def group_gradient(
    model: Any, sample: TokenSample, group: int, *, batch_tokens: int, chunk: int
) -> tuple[list[torch.Tensor], float]:
    """The gradient of group `group`'s mean token loss (one tensor per trainable parameter) and that loss."""
    count = int(sample.counts()[group])
    if count == 0:
        raise T3SError(f"no token of group {group} in the sampled examples; sample more examples")
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.grad = None
    weights = np.zeros(sample.n_groups)
    weights[group] = 1.0 / count
    loss = backward_weighted(model, sample, weights, batch_tokens=batch_tokens, chunk=chunk)
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    for p in params:
        p.grad = None
    return grads, loss
