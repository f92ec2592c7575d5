"""Noise draws of masked-diffusion training: which response tokens are replaced by the mask token.

Every draw comes from an explicit `torch.Generator` (on the CPU, whatever the model's device), so a
draw is a function of its seed alone: reruns, resumed runs and runs on other devices draw the same
masks. The draws never depend on the target set B: with B = ∅ a union-masked run is exactly the
plain dLLM SFT run with the same seed, and with any B it differs only on B's tokens.

- MDM (LLaDA): one t ~ U(t_min, t_max) per sequence; each response token is masked with probability t.
- Block diffusion (BD3-LM): one t per response block (`t3s.dllm.attention.block_ids`).
- Union masking (dLLM-T3S, Eq. 9): m' = m ∨ 1_B, B restricted to the response.
The prompt is never noised and never in the loss: only `maskable` positions can be masked.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from t3s.dllm.settings import Weighting
from t3s.masks import IGNORE


@dataclass(frozen=True)
class NoiseDraw:
    """One draw over a batch: the model's input and what the loss reads."""

    noisy_ids: torch.Tensor  # [B, L] input_ids with the mask token at every masked position
    masked: torch.Tensor  # [B, L] bool: m' (the loss positions)
    t: torch.Tensor  # [B, L] float: the masking probability of each position's sequence or block
    labels: torch.Tensor  # [B, L] the clean token where masked, IGNORE elsewhere
    weights: torch.Tensor  # [B, L] float: the loss weight of each labelled position, 0 elsewhere


def generator(seed: int) -> torch.Generator:
    g = torch.Generator(device="cpu")
    g.manual_seed(seed % 2**63)
    return g


def position_t(
    ids: torch.Tensor, t_min: float, t_max: float, per_block: bool, gen: torch.Generator
) -> torch.Tensor:
    """[B, L] masking probability: one t per sequence (MDM) or per response block (`ids` from block_ids)."""
    b, _ = ids.shape
    columns = int(ids.max()) + 1 if per_block else 1
    t = t_min + (t_max - t_min) * torch.rand((b, columns), generator=gen, dtype=torch.float64)
    index = ids if per_block else torch.zeros_like(ids)
    return t.gather(1, index).float()


def union(masked: torch.Tensor, targets: torch.Tensor, maskable: torch.Tensor) -> torch.Tensor:
    """m' = m ∨ 1_B on maskable positions (a target outside the response is not a token to learn)."""
    return masked | (targets & maskable)


def draw(
    input_ids: torch.Tensor,
    maskable: torch.Tensor,
    targets: torch.Tensor,
    ids: torch.Tensor,
    *,
    mask_token_id: int,
    t_min: float,
    t_max: float,
    per_block: bool,
    weighting: Weighting,
    gen: torch.Generator,
) -> NoiseDraw:
    """Mask each maskable token with its position's probability t, then add the targets B."""
    t = position_t(ids, t_min, t_max, per_block, gen)
    u = torch.rand(input_ids.shape, generator=gen, dtype=torch.float64)
    masked = union(maskable & (u < t), targets, maskable)
    labels = torch.where(masked, input_ids, IGNORE)
    weight = torch.ones_like(t) if weighting == "uniform" else 1.0 / t
    return NoiseDraw(
        noisy_ids=torch.where(masked, mask_token_id, input_ids),
        masked=masked,
        t=t,
        labels=labels,
        weights=torch.where(masked, weight, 0.0),
    )


def loss_count(noise: NoiseDraw, maskable: torch.Tensor, weighting: Weighting) -> torch.Tensor:
    """The tokens one draw adds to the normaliser: its masked tokens (uniform: the mean over masked
    tokens, Eq. 10 and dFactory) or its response tokens (1/t: LLaDA's unbiased estimate, which divides
    by the answer length, because 1/t already rescales the masked ones to the whole response)."""
    return (noise.masked if weighting == "uniform" else maskable).sum()
