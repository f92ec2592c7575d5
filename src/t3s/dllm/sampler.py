"""Masked-diffusion generation (LLaDA-style) behind the same `Engine` interface as the AR engines.

A canvas of the prompt and `max_new_tokens` mask tokens is decoded block by block (semi-autoregressive,
`block_length`), `steps` denoising steps spread evenly over the blocks. At each step the model
predicts every masked position of the current block (Gumbel-max at the sampling temperature, greedy
at 0; the mask token itself is never predicted) and commits the most confident ones (low_confidence
remasking: the predicted token's probability; random: a uniform score), as many as the schedule
says, or more with a confidence threshold (parallel decoding, Fast-dLLM / LLaDA-2). Attention is
`full` (MDM students: the whole canvas) or `block` (block-diffusion students: the clean past and the
current block, block-causally, as in training). Every draw comes from a seeded generator. A sample
stops at its first end-of-turn token, which its token count includes (`t3s eval` reports it); once
every sample has stopped, later blocks are not decoded.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from t3s.backends import BackendOptions, EngineBackend
from t3s.dllm.a2d import mask_token_id
from t3s.dllm.attention import bidirectional_mask, block_causal_mask, model_attention_mask
from t3s.dllm.noise import generator
from t3s.dllm.settings import DiffusionSampling
from t3s.errors import T3SError
from t3s.generation import Completion, OnBatch, SamplingParams, TransformersEngine
from t3s.tokens import Template


def transfer_schedule(masked: int, steps: int) -> list[int]:
    """Tokens committed at each of `steps` steps of a block: as even as possible, the extra ones first.

    >>> transfer_schedule(10, 4)
    [3, 3, 2, 2]
    """
    base, extra = divmod(masked, steps)
    return [base + (k < extra) for k in range(steps)]


def _commit(confidence: torch.Tensor, candidate: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """[N, L] bool: each row's `k` most confident candidates (ties: the earlier position)."""
    score = torch.where(candidate, confidence, -torch.inf)
    order = torch.sort(score, dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order).scatter_(
        1, order, torch.arange(score.shape[1]).expand_as(order).contiguous()
    )
    return candidate & (rank < k[:, None])


class DiffusionEngine(TransformersEngine):
    """Batched masked-diffusion sampling over a dLLM in memory (its stops and decoding are the AR engine's)."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        settings: DiffusionSampling,
        batch_size: int = 32,
        progress: str | None = "generate",
        *,
        template: Template = "auto",
    ) -> None:
        super().__init__(model, tokenizer, batch_size, progress, template=template)
        self.settings, self.mask_id = settings, mask_token_id(tokenizer)

    def _check(self, params: SamplingParams) -> tuple[int, int]:
        """(blocks, steps per block) of a generation; refuses settings the sampler cannot honour."""
        s, length = self.settings, params.max_new_tokens
        if params.top_p < 1:
            raise T3SError(f"the dLLM sampler has no nucleus sampling: top_p must be 1, not {params.top_p}")
        if length % s.block_length:
            raise T3SError(
                f"max_new_tokens {length} is not a multiple of the dLLM block length {s.block_length}"
            )
        blocks = length // s.block_length
        steps = s.steps or length
        if steps % blocks:
            raise T3SError(
                f"dLLM steps {steps} do not divide evenly over {blocks} blocks of {s.block_length} tokens"
            )
        return blocks, steps // blocks

    def _generate(
        self, prompts: Sequence[list[int]], params: SamplingParams, on_batch: OnBatch | None
    ) -> list[list[Completion]]:
        self._check(params)  # refused before the first batch
        return super()._generate(prompts, params, on_batch)

    def _generate_batch(self, prompts: list[list[int]], params: SamplingParams, start: int) -> Any:
        blocks, per_block = self._check(params)
        rows = [p for p in prompts for _ in range(params.n)]
        return self._denoise(rows, params, blocks, per_block, generator(params.seed * 1_000_003 + start))

    def _denoise(
        self, rows: list[list[int]], params: SamplingParams, blocks: int, per_block: int, gen: torch.Generator
    ) -> torch.Tensor:
        """The new tokens [N, max_new_tokens] of left-padded prompts `rows`."""
        s, device = self.settings, next(self.model.parameters()).device
        width, length = max(len(r) for r in rows), params.max_new_tokens
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.mask_id
        x = torch.full((len(rows), width + length), self.mask_id, dtype=torch.long)
        valid = torch.ones_like(x, dtype=torch.bool)
        for b, r in enumerate(rows):
            x[b, : width - len(r)], valid[b, : width - len(r)] = pad, False
            x[b, width - len(r) : width] = torch.tensor(r)
        positions = (valid.cumsum(1) - 1).clamp(min=0)
        ids = torch.where(
            torch.arange(x.shape[1]) < width, 0, 1 + (torch.arange(x.shape[1]) - width) // s.block_length
        ).expand_as(x)
        stop_ids = torch.tensor(list(self.stops))
        for block in range(blocks):
            lo, hi = width + block * s.block_length, width + (block + 1) * s.block_length
            seen = x.shape[1] if s.attention == "full" else hi
            if s.attention == "full":
                mask = bidirectional_mask(valid[:, :seen])
            else:
                mask = block_causal_mask(ids[:, :seen], valid[:, :seen])
            attn = model_attention_mask(mask.to(device), self.model)
            for k in transfer_schedule(s.block_length, per_block):
                candidate = torch.zeros_like(valid)
                candidate[:, lo:hi] = x[:, lo:hi] == self.mask_id
                if not candidate.any():
                    break
                logits = (
                    self.model(
                        input_ids=x[:, :seen].to(device),
                        attention_mask=attn,
                        position_ids=positions[:, :seen].to(device),
                    )
                    .logits.float()
                    .cpu()
                )
                logits[..., self.mask_id] = -torch.inf  # a committed token is never the mask token
                pred, conf = self._predict(logits, params.temperature, gen)
                candidate = candidate[:, :seen]
                count = torch.full((x.shape[0],), k)
                if s.threshold is not None:
                    count = torch.maximum(count, ((conf > s.threshold) & candidate).sum(1))
                commit = _commit(conf, candidate, count)
                x[:, :seen] = torch.where(commit, pred, x[:, :seen])
            if torch.isin(x[:, width:hi], stop_ids).any(1).all():
                break  # every sample has ended its turn: what follows is never read
        return x[:, width:]

    def _predict(
        self, logits: torch.Tensor, temperature: float, gen: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Predicted tokens and their confidence scores."""
        if temperature > 0:
            gumbel = -torch.log(-torch.log(torch.rand(logits.shape, generator=gen).clamp_min(1e-20)))
            pred = (logits / temperature + gumbel).argmax(-1)
        else:
            pred = logits.argmax(-1)
        if self.settings.remasking == "random":
            return pred, torch.rand(pred.shape, generator=gen)
        return pred, logits.softmax(-1).gather(-1, pred[..., None])[..., 0]


def diffusion_backend(
    model: Any, tokenizer: Any, settings: DiffusionSampling, options: BackendOptions | None = None
) -> EngineBackend:
    """A dLLM in memory behind the job interface the probe and `t3s eval` use (cf. `make_backend`)."""
    options = options or BackendOptions()
    return EngineBackend(
        lambda: DiffusionEngine(
            model,
            tokenizer,
            settings,
            options.batch_size,
            progress=options.progress,
            template=options.template,
        ),
        options,
        tokenizer=lambda: tokenizer,
    )


def load_diffusion_engine(path: str, settings: DiffusionSampling, options: BackendOptions) -> DiffusionEngine:
    """A saved dLLM (with its tokenizer, whose mask token the sampler writes) as an engine, placed
    and typed as `options` say: what `t3s eval` builds for each model of a dLLM run."""
    from t3s.dllm.a2d import load_dllm
    from t3s.models import load_tokenizer, resolve_device, resolve_dtype

    device = resolve_device(options.device)
    model = load_dllm(
        path,
        device=device,
        dtype=resolve_dtype(options.dtype, device),
        trust_remote_code=options.trust_remote_code,
    )
    tokenizer = load_tokenizer(path, trust_remote_code=options.trust_remote_code)
    return DiffusionEngine(
        model, tokenizer, settings, options.batch_size, progress=options.progress, template=options.template
    )
