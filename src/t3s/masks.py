"""Token masks and their one position convention: which tokens are anchors, which are trained.

Every per-token array of t3s is aligned with `input_ids`, position i speaking of token i: the
profile's c_i is log p(x_i | x_<i) (`t3s.confidence`), a keep mask's 1 at i trains the prediction
of token i, and `labels[i]` is token i where it is trained, -100 elsewhere. Nothing is shifted
here: the trainer predicts labels[i] from the positions before i, as HF causal LMs do. The one
other convention t3s writes is verl's, on export (`t3s.export.verl_loss_mask`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from t3s.tokens import TokenizedExample

IGNORE = -100  # the label of a token that is not trained (PyTorch's and HF's ignore_index)


def is_anchor(delta: np.ndarray, threshold: float = 0.0) -> np.ndarray:
    """Imitation-Anchor Tokens: Δc > threshold; the others (Δc <= threshold) are not.

    NaN is never an anchor: a token without a score (no context before it, or outside the
    response) compares False, so selection keeps it in the loss and the analyses count it nowhere.

    >>> is_anchor(np.array([0.5, 0.0, -0.2, np.nan]))
    array([ True, False, False, False])
    >>> is_anchor(np.array([0.5, 0.2]), threshold=0.3)
    array([ True, False])
    """
    return np.asarray(delta) > threshold


def response_mask(length: int, start: int, end: int) -> np.ndarray:
    """True on the response span [start, end) of an example of `length` tokens.

    >>> response_mask(5, 2, 4).astype(int)
    array([0, 0, 1, 1, 0])
    """
    mask = np.zeros(length, dtype=bool)
    mask[start:end] = True
    return mask


def labels_from_mask(input_ids: Sequence[int] | np.ndarray, keep: Sequence[int] | np.ndarray) -> np.ndarray:
    """Labels of a keep mask over all positions: token i where it is trained, -100 elsewhere.

    >>> labels_from_mask([11, 12, 13, 14], [0, 0, 1, 1])
    array([-100, -100,   13,   14])
    """
    return np.where(np.asarray(keep, dtype=bool), np.asarray(input_ids, dtype=np.int64), IGNORE)


def labels_for(item: TokenizedExample, keep: np.ndarray | None = None) -> list[int]:
    """Labels of one example: the response tokens that `keep` keeps (None: the whole response).

    `keep` is a 0/1 array over all positions of `item.input_ids`; a 1 outside the response trains nothing.

    >>> item = TokenizedExample("x", [11, 12, 13, 14], response_start=2, response_end=4)
    >>> labels_for(item)
    [-100, -100, 13, 14]
    >>> labels_for(item, np.array([1, 1, 0, 1]))  # token 2 masked out: only token 3 is trained
    [-100, -100, -100, 14]
    """
    trained = response_mask(len(item.input_ids), item.response_start, item.response_end)
    if keep is not None:
        trained &= np.asarray(keep, dtype=bool)
    return labels_from_mask(item.input_ids, trained).tolist()
