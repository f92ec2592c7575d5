"""Teacher-forced per-token log-probabilities, memory-bounded: the one place that knows about shifting.

For a sequence x, position i holds c_i = log p(x_i | x_<i): the logits that predict x_i come from
the hidden state at i - 1. Only the hidden states of scored positions go through the output
layer, a chunk of positions at a time, so the extra memory is O(chunk x vocab) whatever the batch
and sequence lengths (32K-token traces with 150K vocabularies stay within a few GB). The profile
also takes, from the same log-softmax, the entropy of the distribution that predicted each token.

The output layer and the log-softmax always run in float32, whatever the model's dtype: a bf16
logit is rounded by up to 2^-8 of its size (0.1 nats at logit 30), more than many |Δc| worth
scoring. The hidden states still come from the model's dtype, and in bf16 their error dominates
(see `t3s.profile`, which reports how many Δc fall within it).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from t3s.errors import T3SError
from t3s.tokens import TokenizedExample

# Output-layer rows converted to float32 at once: the extra memory is _VOCAB_BLOCK x hidden x 4
# bytes (256 MB at hidden 4096), where a float32 copy of the whole layer would take 2.5 GB for
# Qwen3-8B; re-converting it per chunk of positions costs a few % of the float32 matmul it feeds.
_VOCAB_BLOCK = 16384


def _finish_logits(model: Any, logits: torch.Tensor) -> torch.Tensor:
    """Apply the output transformations some architectures put after the output layer."""
    config = model.config
    if getattr(config, "logit_scale", None) is not None:  # Cohere
        logits = logits * config.logit_scale
    if getattr(config, "logits_scaling", None) is not None:  # Granite
        logits = logits / config.logits_scaling
    cap = getattr(config, "final_logit_softcapping", None)  # Gemma 2/3
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def hidden_states(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The last hidden states of the decoder (before the output layer), [batch, seq, hidden]."""
    decoder = model.get_decoder()
    out = decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    return out.last_hidden_state


def _logits_float32(head: torch.nn.Linear, hidden: torch.Tensor) -> torch.Tensor:
    """hidden @ W.T (+ b) in float32, a lower-precision weight converted `_VOCAB_BLOCK` rows at a time."""
    weight, bias = head.weight, head.bias
    x = hidden.float()
    if weight.dtype == torch.float32:  # nothing to convert: one matmul, no block copies
        return torch.nn.functional.linear(x, weight, bias)
    logits = torch.empty(x.shape[0], weight.shape[0], dtype=torch.float32, device=x.device)
    for v in range(0, weight.shape[0], _VOCAB_BLOCK):
        rows = slice(v, v + _VOCAB_BLOCK)
        b = None if bias is None else bias[rows].float()
        logits[:, rows] = torch.nn.functional.linear(x, weight[rows].float(), b)
    return logits


def _output_layer(model: Any) -> torch.nn.Linear:
    head = model.get_output_embeddings()
    if not isinstance(head, torch.nn.Linear):
        raise T3SError(
            f"{type(model).__name__}: its output layer is a {type(head).__name__}, not a Linear layer; "
            "t3s computes log-probs from that layer's weight in float32"
        )
    return head


def _target_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log_softmax(logits).gather(targets); when scoring, in place: no second [rows x vocab] tensor."""
    picked = logits.gather(-1, targets[:, None])[:, 0]
    if logits.requires_grad:  # the analyses backpropagate through this: keep the logits intact
        return picked - torch.logsumexp(logits, -1)
    top = logits.amax(-1)
    return picked - top - logits.sub_(top[:, None]).exp_().sum(-1).log()


def gather_logprobs(model: Any, hidden: torch.Tensor, targets: torch.Tensor, chunk: int) -> torch.Tensor:
    """log p(target_j | hidden_j) for rows of `hidden` [n, h], computed `chunk` rows at a time."""
    head = _output_layer(model)
    out = torch.empty(targets.shape[0], dtype=torch.float32, device=hidden.device)
    for s in range(0, hidden.shape[0], chunk):
        logits = _finish_logits(model, _logits_float32(head, hidden[s : s + chunk]))
        out[s : s + chunk] = _target_logprobs(logits, targets[s : s + chunk])
        del logits
    return out


def gather_logprobs_entropy(
    model: Any, hidden: torch.Tensor, targets: torch.Tensor, chunk: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """`gather_logprobs` and, from the same float32 log-softmax, the entropy -Σ_v p_v log p_v (nats)
    of each row's predictive distribution."""
    head = _output_layer(model)
    out = torch.empty(targets.shape[0], dtype=torch.float32, device=hidden.device)
    entropy = torch.empty_like(out)
    for s in range(0, hidden.shape[0], chunk):
        rows = slice(s, s + chunk)
        logits = _finish_logits(model, _logits_float32(head, hidden[rows]))
        # The arithmetic of `_target_logprobs`, so both paths give the same floats; the shifted
        # logits overwrite their block and exp(shifted) is the one second block alive.
        shifted = logits.sub_(logits.amax(-1, keepdim=True))
        e = shifted.exp()
        total = e.sum(-1)
        out[rows] = shifted.gather(-1, targets[rows, None])[:, 0] - total.log()
        # H = log S - Σ e·shifted / S; a -inf logit (e = 0) adds 0, not 0 · -inf = NaN.
        shifted.clamp_(min=torch.finfo(shifted.dtype).min)
        entropy[rows] = total.log() - e.mul_(shifted).sum(-1) / total
        del logits, e
    return out, entropy


def batches_by_tokens(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Group indices (longest first) so that each padded batch holds at most `max_tokens` tokens."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    for i in order:
        if batches and (len(batches[-1]) + 1) * lengths[batches[-1][0]] <= max_tokens:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def _positions(items: Sequence[TokenizedExample]) -> tuple[list[int], list[int]]:
    """Batch rows and positions scored: response positions with at least one token of context.

    Position i gets c_i = log p(x_i | x_<i), read from the logits at i - 1, so position 0 cannot
    be scored and stays NaN in the profile (and is never an anchor, `t3s.masks.is_anchor`):

    >>> item = TokenizedExample("x", [11, 12, 13, 14], response_start=0, response_end=3)
    >>> _positions([item])  # (rows, positions): c_1 and c_2; c_0 and c_3 (outside) stay NaN
    ([0, 0], [1, 2])
    """
    rows, cols = [], []
    for b, t in enumerate(items):
        span = range(max(t.response_start, 1), t.response_end)
        rows.extend([b] * len(span))
        cols.extend(span)
    return rows, cols


def _padded(items: Sequence[TokenizedExample], device: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded token ids and their attention mask."""
    width = max(len(t.input_ids) for t in items)
    ids = torch.zeros((len(items), width), dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for b, t in enumerate(items):
        ids[b, : len(t.input_ids)] = torch.tensor(t.input_ids)
        mask[b, : len(t.input_ids)] = 1
    return ids.to(device), mask.to(device)


@torch.inference_mode()
def score_batch(
    model: Any, items: Sequence[TokenizedExample], chunk: int = 1024, *, entropy: bool = False
) -> list[np.ndarray]:
    """Per-token log-probs for a batch: one float32 array per example, NaN outside the response.

    With `entropy`, each array is [2, length]: the log-probs, then at the same positions the entropy
    of the distribution that predicted each token, from the same pass.
    """
    device = next(model.parameters()).device
    ids, mask = _padded(items, device)
    rows, cols = _positions(items)
    out = [np.full((2 if entropy else 1, len(t.input_ids)), np.nan, dtype=np.float32) for t in items]
    if not rows:
        return out if entropy else [o[0] for o in out]
    hidden = hidden_states(model, ids, mask)
    r = torch.tensor(rows, device=device)
    c = torch.tensor(cols, device=device)
    # The hidden state at c - 1 predicts token c: c_c lands at position c, aligned with input_ids.
    h, targets = hidden[r, c - 1], ids[r, c]
    if entropy:
        values = torch.stack(gather_logprobs_entropy(model, h, targets, chunk)).cpu().numpy()
    else:
        values = gather_logprobs(model, h, targets, chunk)[None].cpu().numpy()
    offset = 0
    for b, t in enumerate(items):
        start = max(t.response_start, 1)
        n = max(0, t.response_end - start)
        out[b][:, start : start + n] = values[:, offset : offset + n]
        offset += n
    return out if entropy else [o[0] for o in out]


@torch.inference_mode()
def greedy_reproduces(model: Any, items: Sequence[TokenizedExample], chunk: int = 1024) -> list[bool]:
    """Whether every response token of each item is the model's argmax given the tokens before it.

    Then greedy decoding from the prompt (everything before `response_start`) generates exactly that
    response, up to near-ties that the generation's own dtype rounds differently (the logits here
    are float32, as in `score_batch`)."""
    device = next(model.parameters()).device
    head = model.get_output_embeddings()
    out = []
    for batch in batches_by_tokens([len(t.input_ids) for t in items], 16384):
        part = [items[i] for i in batch]
        ids, mask = _padded(part, device)
        rows, cols = _positions(part)
        hidden = hidden_states(model, ids, mask)
        r, c = torch.tensor(rows, device=device), torch.tensor(cols, device=device)
        h, targets = hidden[r, c - 1], ids[r, c]
        hits = torch.empty(len(rows), dtype=torch.bool, device=device)
        for s in range(0, len(rows), chunk):
            logits = _finish_logits(model, _logits_float32(head, h[s : s + chunk]))
            hits[s : s + chunk] = logits.argmax(-1) == targets[s : s + chunk]
        ok = {b: True for b in range(len(part))}
        for b, hit in zip(rows, hits.tolist(), strict=True):
            ok[b] = ok[b] and hit
        out += [(i, ok[b]) for b, i in enumerate(batch)]
    return [hit for _, hit in sorted(out)]


@torch.inference_mode()
def check_against_full_forward(
    model: Any, item: TokenizedExample, values: np.ndarray, max_len: int = 64
) -> None:
    """Compare the chunked path with a plain full-logit forward on a short prefix of one example.

    Catches architectures that transform logits in a way `_finish_logits` does not know about.
    """
    end = min(len(item.input_ids), max(item.response_start + 1, max_len))
    start = max(item.response_start, 1)
    if end <= start:
        return
    device = next(model.parameters()).device
    ids = torch.tensor([item.input_ids[:end]], device=device)
    logits = model(input_ids=ids, use_cache=False).logits[0].float()
    ref = torch.log_softmax(logits[start - 1 : end - 1], -1).gather(-1, ids[0, start:end, None])[:, 0]
    got = torch.from_numpy(values[start:end]).to(device)
    # Below float32 the reference's own logits are rounded (by up to eps/2 of the largest), while
    # `values` come from a float32 output layer; 0.1 absorbs batching and padding differences.
    dtype = next(model.parameters()).dtype
    tol = 1e-3 if dtype == torch.float32 else 0.1 + torch.finfo(dtype).eps * logits.abs().max().item()
    err = (ref - got).abs().max().item()
    if not err <= tol:
        raise T3SError(
            f"per-token log-probs of {type(model).__name__} differ from its full forward by {err:.3g} "
            "(an output transformation t3s does not know); please report this model"
        )


def score(
    model: Any,
    items: Sequence[TokenizedExample],
    *,
    max_batch_tokens: int = 16384,
    chunk: int = 1024,
    on_batch: Any = None,
    entropy: bool = False,
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (index into `items`, per-token log-probs) for every example, longest batches first
    (with `entropy`, [log-probs, entropies] as `score_batch` gives them)."""
    checked = False
    for batch in batches_by_tokens([len(t.input_ids) for t in items], max_batch_tokens):
        values = score_batch(model, [items[i] for i in batch], chunk, entropy=entropy)
        if not checked:
            check_against_full_forward(model, items[batch[-1]], values[-1][0] if entropy else values[-1])
            checked = True
        yield from zip(batch, values, strict=True)
        if on_batch is not None:
            on_batch(sum(len(items[i].input_ids) for i in batch))
