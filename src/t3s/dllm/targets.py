"""The target set B of dLLM-T3S: yet-to-learn tokens that every training draw masks (Eq. 8-9).

B = {response tokens with Δc < −τ}, Δc from an AR selector's profile (`t3s.profile`), τ = 0.2 by
default (~5% of tokens in the paper). The selector must tokenize exactly as the dLLM student does,
which the A2D conversion allows up to added special tokens (its mask token):
`check_shared_tokenizer` compares the tokenizers themselves, never their names. The control
baseline is a random B of the same size (`random_targets`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from t3s.errors import T3SError

DEFAULT_TAU = 0.2


def yet_to_learn(delta: np.ndarray, response: np.ndarray, tau: float = DEFAULT_TAU) -> np.ndarray:
    """Response positions with Δc < −τ; a NaN Δc (no score) is never a target.

    >>> yet_to_learn(np.array([-0.5, -0.1, np.nan, -0.9]), np.array([True, True, True, False]))
    array([ True, False, False, False])
    """
    with np.errstate(invalid="ignore"):
        return np.asarray(response, dtype=bool) & (np.asarray(delta) < -tau)


def random_targets(responses: Sequence[np.ndarray], size: int, seed: int = 0) -> list[np.ndarray]:
    """`size` response positions drawn uniformly over the whole corpus (seeded), as per-example masks."""
    flat = np.concatenate([np.asarray(r, dtype=bool) for r in responses])
    positions = np.flatnonzero(flat)
    if size > len(positions):
        raise T3SError(
            f"a random target set of {size} tokens exceeds the corpus's {len(positions)} response tokens"
        )
    chosen = np.zeros_like(flat)
    chosen[np.random.default_rng(seed).choice(positions, size=size, replace=False)] = True
    bounds = np.cumsum([0, *(len(r) for r in responses)])
    return [chosen[bounds[i] : bounds[i + 1]] for i in range(len(responses))]


def _tokenizer_parts(tokenizer: Any) -> tuple[dict[str, Any], dict[int, tuple[str, bool]]]:
    """What decides token ids, and the added tokens by id (content, special)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:  # a Python tokenizer: its vocabulary is all there is to compare
        core: dict[str, Any] = {"vocab": sorted(tokenizer.get_vocab().items())}
    else:
        spec = json.loads(backend.to_str())
        core = {k: v for k, v in spec.items() if k not in ("added_tokens", "truncation", "padding")}
    added = {i: (t.content, bool(t.special)) for i, t in tokenizer.added_tokens_decoder.items()}
    if backend is None:
        core["vocab"] = [kv for kv in core["vocab"] if kv[1] not in added]
    return core, added


def check_shared_tokenizer(selector: Any, student: Any, where: str = "selector") -> None:
    """Refuse a selector whose token ids mean something else to the student.

    Equal models (vocabulary, merges, normalizer, pre-tokenizer, ...) and equal added tokens, except
    special tokens the student adds on top (the A2D mask token) at ids the selector does not use.
    """
    core_a, added_a = _tokenizer_parts(selector)
    core_b, added_b = _tokenizer_parts(student)
    differs = [k for k in sorted(set(core_a) | set(core_b)) if core_a.get(k) != core_b.get(k)]
    if differs:
        raise T3SError(
            f"{where}: its tokenizer differs from the dLLM student's ({', '.join(differs)}); "
            "Δc can only select tokens for a student that shares the selector's tokenizer"
        )
    for i, token in added_a.items():
        if added_b.get(i) != token:
            raise T3SError(
                f"{where}: token id {i} is {token[0]!r} for the selector but "
                f"{added_b[i][0] if i in added_b else 'absent'!r} for the dLLM student"
            )
    extra = [content for i, (content, special) in added_b.items() if i not in added_a and not special]
    if extra:
        raise T3SError(
            f"{where}: the dLLM student adds non-special tokens the selector lacks: {', '.join(extra)}"
        )
