"""4D attention masks for masked-diffusion students, as booleans (True: the query may see the key).

Every position carries a block id: 0 for the prompt, 1 + (i - response_start) // block_size for
response position i, so blocks are counted from the start of the response (the prompt is one clean
block in front). With block_size >= the response length this is plain MDM with a prompt block.

- `bidirectional_mask`: every query sees every valid key (MDM; A2D models).
- `block_causal_mask`: a query sees the valid keys of its own block and of earlier blocks (a clean
  sequence in block diffusion; the sampler's view when it decodes the last block).
- `block_diffusion_mask`: the BD3-LM training input [x_t ⊕ x_0] of length 2L: a noisy block sees
  itself (block-diagonal) and the clean blocks before it (offset block-causal); the clean half is
  block-causal. `block_diffusion_mask_reference` builds the same mask position by position.

Masks are passed to the model as 4D tensors, which transformers hands to the attention kernel as
they are (`masking_utils._preprocess_mask_arguments`); with a mask present SDPA's `is_causal` is
False, so the model's own causal flag cannot override it. `model_attention_mask` converts a mask to
what the model's attention implementation reads (bool for SDPA, an additive bias for eager).
"""

from __future__ import annotations

from typing import Any

import torch

from t3s.errors import T3SError


def block_ids(length: int, response_start: int, block_size: int) -> torch.Tensor:
    """Block id per position of one sequence: 0 on the prompt, 1, 2, ... on response blocks.

    >>> block_ids(7, 3, 2).tolist()
    [0, 0, 0, 1, 1, 2, 2]
    """
    pos = torch.arange(length)
    return torch.where(
        pos < response_start, 0, 1 + (pos - response_start).div(block_size, rounding_mode="floor")
    )


def batch_block_ids(length: int, starts: torch.Tensor, block_size: int) -> torch.Tensor:
    """[B, L] block ids of a right-padded batch whose rows start their responses at `starts`."""
    return torch.stack([block_ids(length, int(s), block_size) for s in starts])


def bidirectional_mask(valid: torch.Tensor) -> torch.Tensor:
    """[B, 1, L, L]: every query sees every valid key."""
    b, n = valid.shape
    return valid[:, None, None, :].expand(b, 1, n, n)


def block_causal_mask(ids: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """[B, 1, L, L]: a query sees the valid keys of its own and earlier blocks."""
    return ((ids[:, None, :, None] >= ids[:, None, None, :]) & valid[:, None, None, :]).contiguous()


def block_diffusion_mask(ids: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """[B, 1, 2L, 2L] mask of the BD3-LM input [x_t ⊕ x_0] (noisy half first)."""
    q, k = ids[:, None, :, None], ids[:, None, None, :]
    key_ok = valid[:, None, None, :]
    noisy_noisy = (q == k) & key_ok  # block-diagonal: a noisy block denoises itself
    noisy_clean = (q > k) & key_ok  # offset block-causal: it conditions on the clean past only
    clean_clean = (q >= k) & key_ok  # block-causal: the clean stream never sees noise
    top = torch.cat([noisy_noisy, noisy_clean], dim=-1)
    bottom = torch.cat([torch.zeros_like(clean_clean), clean_clean], dim=-1)
    return torch.cat([top, bottom], dim=-2)


def block_diffusion_mask_reference(ids: list[int], valid: list[bool]) -> list[list[bool]]:
    """The [x_t ⊕ x_0] mask of one sequence, decided query by query and key by key (for tests)."""
    n = len(ids)
    rows = []
    for qi in range(2 * n):
        row = []
        for ki in range(2 * n):
            q_noisy, k_noisy = qi < n, ki < n
            q_block, k_block = ids[qi % n], ids[ki % n]
            if not valid[ki % n]:
                seen = False
            elif q_noisy and k_noisy:
                seen = q_block == k_block
            elif q_noisy:
                seen = k_block < q_block
            elif k_noisy:
                seen = False
            else:
                seen = k_block <= q_block
            row.append(seen)
        rows.append(row)
    return rows


def model_attention_mask(mask: torch.Tensor, model: Any) -> torch.Tensor:
    """The 4D mask as `model`'s attention implementation reads it: bool (SDPA) or an additive bias (eager).

    Kernels that take no 4D mask (flash-attention, flex) are refused: they would drop it silently.
    """
    impl = getattr(model.config, "_attn_implementation", None) or "eager"
    if impl == "sdpa":
        return mask
    if impl == "eager":
        dtype = model.get_input_embeddings().weight.dtype
        zero = torch.zeros((), dtype=dtype, device=mask.device)
        return torch.where(mask, zero, torch.finfo(dtype).min)
    raise T3SError(
        f"attention implementation {impl!r} takes no 4D mask; load the dLLM with attn_implementation sdpa or eager"
    )
