"""Masked-diffusion training inside the HF Trainer path AR training uses (same recipe, checkpoints,
resume, accelerate); only the batch and the loss differ.

The collator pads a batch and marks what may be noised (the response, and LLaDA's EOS padding) and
the target set B of union masking. The noise is drawn when Trainer fetches the micro-batches of an
optimizer step (`get_batch_samples`), from a generator seeded by (seed, step, the micro-batch's place
in the step's global batch): the masks are then known before any forward, so the loss tokens of the
whole step are counted on every process and gathered, as Trainer counts AR labels, and each
micro-batch's loss is its weighted sum over that global count (`t3s.dllm.noise.loss_count`). A
resumed run draws the same masks, since the draw depends on the step and not on any RNG state, and
so do N processes and one accumulating their micro-batches: they train to the same weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from t3s.dllm.a2d import make_bidirectional, mask_token_id
from t3s.dllm.attention import (
    batch_block_ids,
    bidirectional_mask,
    block_diffusion_mask,
    model_attention_mask,
)
from t3s.dllm.loss import weighted_token_nll_sum
from t3s.dllm.noise import draw, generator, loss_count
from t3s.dllm.settings import DiffusionSettings
from t3s.errors import T3SError
from t3s.fingerprint import digest
from t3s.tokens import TokenizedExample
from t3s.training import TrainRecipe, _stop_on_nonfinite_loss, _trainer_class, training_arguments


def diffusion_dataset(items: Sequence[TokenizedExample], targets: Sequence[np.ndarray] | None = None) -> Any:
    """Examples with their response span and target set B (0/1 over all positions; None: B = ∅)."""
    import datasets

    if not any(t.response_end > t.response_start for t in items):
        raise T3SError("no response token to train on: every example's response is empty")
    rows = targets if targets is not None else [np.zeros(len(t.input_ids), dtype=np.int8) for t in items]
    for item, row in zip(items, rows, strict=True):
        if len(row) != len(item.input_ids):
            raise T3SError(
                f"example {item.id!r}: target mask of {len(row)} positions for {len(item.input_ids)} tokens"
            )
    return datasets.Dataset.from_dict(
        {
            "input_ids": [t.input_ids for t in items],
            "response_start": [t.response_start for t in items],
            "response_end": [t.response_end for t in items],
            "target_mask": [np.asarray(r, dtype=np.int8).tolist() for r in rows],
        }
    )


class DiffusionCollator:
    """Right-pads a batch: `maskable` marks the response (and EOS padding), `valid` the keys to attend."""

    def __init__(self, settings: DiffusionSettings, pad_id: int, eos_id: int | None) -> None:
        if settings.pad_with_eos and eos_id is None:
            raise T3SError("pad_with_eos needs a tokenizer with an EOS token")
        self.settings, self.pad_id, self.eos_id = settings, pad_id, eos_id

    def _length(self, features: Sequence[dict[str, Any]]) -> int:
        if self.settings.pad_with_eos and self.settings.objective == "block":
            # EOS padding completes each response's last block: the sampler decodes whole blocks.
            size = self.settings.block_size
            return max(f["response_start"] + -(-(f["response_end"] - f["response_start"]) // size) * size
                       for f in features)  # fmt: skip
        return max(len(f["input_ids"]) for f in features)

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        n, length = len(features), self._length(features)
        pad = self.eos_id if self.settings.pad_with_eos else self.pad_id
        input_ids = torch.full((n, length), pad, dtype=torch.long)
        maskable = torch.zeros((n, length), dtype=torch.bool)
        valid = torch.zeros((n, length), dtype=torch.bool)
        targets = torch.zeros((n, length), dtype=torch.bool)
        for b, f in enumerate(features):
            size, start = len(f["input_ids"]), f["response_start"]
            input_ids[b, :size] = torch.tensor(f["input_ids"])
            targets[b, :size] = torch.tensor(f["target_mask"], dtype=torch.bool)
            end = length if self.settings.pad_with_eos else f["response_end"]
            maskable[b, start:end] = True
            valid[b, : length if self.settings.pad_with_eos else size] = True
        starts = torch.tensor([f["response_start"] for f in features])
        block = self.settings.block_size if self.settings.objective == "block" else length
        return {
            "input_ids": input_ids,
            "maskable": maskable,
            "valid": valid,
            "target_mask": targets,
            "block_ids": batch_block_ids(length, starts, block),
        }


def draw_seed(seed: int, step: int, micro: int) -> int:
    """The seed of one micro-batch's noise: a function of where it sits in training, nothing else
    (`micro`: its index in the step's global batch, over every process)."""
    return int(digest("dllm-noise", seed, step, micro), 16) % 2**63


def noise_batch(
    batch: dict[str, torch.Tensor], settings: DiffusionSettings, mask_id: int, seed: int
) -> torch.Tensor:
    """Draw one micro-batch's noise into `batch` (noisy_ids, labels, weights, t); returns its loss-token count."""
    device = batch["input_ids"].device
    cpu = {k: batch[k].cpu() for k in ("input_ids", "maskable", "target_mask", "block_ids")}
    noise = draw(
        cpu["input_ids"],
        cpu["maskable"],
        cpu["target_mask"],
        cpu["block_ids"],
        mask_token_id=mask_id,
        t_min=settings.t_min,
        t_max=settings.t_max,
        per_block=settings.objective == "block",
        weighting=settings.weighting,
        gen=generator(seed),
    )
    batch.update(
        noisy_ids=noise.noisy_ids.to(device),
        labels=noise.labels.to(device),
        weights=noise.weights.to(device),
        t=noise.t.to(device),  # not used by the loss; kept for inspection (tests, debugging)
    )
    return loss_count(noise, cpu["maskable"], settings.weighting)


def diffusion_forward(
    model: Any, batch: dict[str, torch.Tensor], objective: str, unwrapped: Any = None
) -> torch.Tensor:
    """Logits over the noisy sequence: x_t alone (MDM) or x_t of [x_t ⊕ x_0] (block diffusion).

    `unwrapped` is the model under a DDP/FSDP wrapper, whose config says how to pass the mask.
    """
    noisy, valid, ids = batch["noisy_ids"], batch["valid"], batch["block_ids"]
    length = noisy.shape[1]
    positions = torch.arange(length, device=noisy.device).expand(noisy.shape[0], length)
    if objective == "block":
        inputs = torch.cat([noisy, batch["input_ids"]], dim=1)
        mask = block_diffusion_mask(ids, valid)
        positions = torch.cat([positions, positions], dim=1)  # the clean copy sits at the same positions
    else:
        inputs, mask = noisy, bidirectional_mask(valid)
    out = model(
        input_ids=inputs,
        attention_mask=model_attention_mask(mask, unwrapped or model),
        position_ids=positions,
    )
    return out.logits[:, :length]


def _diffusion_trainer_class() -> Any:
    class DiffusionTrainer(_trainer_class()):  # type: ignore[misc]
        # compute_loss divides by the step's global count itself: Trainer must not rescale it again.
        loss_is_scaled_for_ga = True

        def __init__(
            self, *args: Any, diffusion: DiffusionSettings, mask_token_id: int, **kwargs: Any
        ) -> None:
            super().__init__(*args, **kwargs)
            self.diffusion, self.mask_token_id = diffusion, mask_token_id

        def get_batch_samples(self, *args: Any, **kwargs: Any) -> Any:
            samples, _ = super().get_batch_samples(*args, **kwargs)  # no labels yet: nothing counted
            step, world, process = self.state.global_step, self.args.world_size, self.args.process_index
            count = torch.zeros((), dtype=torch.long)
            for k, batch in enumerate(samples):
                # accelerate deals the micro-batches to the processes in turn, so this process's k-th
                # is the step's (k·world + process)-th: the one a single process accumulating draws.
                seed = draw_seed(self.args.seed, step, k * world + process)
                count += noise_batch(batch, self.diffusion, self.mask_token_id, seed)
            count = count.to(self.args.device)
            if self.args.average_tokens_across_devices and self.args.world_size > 1:
                count = self.accelerator.gather(count).sum()
            # A step whose draws mask nothing has nothing to learn: loss 0 with zero gradients, not NaN.
            return samples, count.clamp(min=1)

        def compute_loss(
            self,
            model: Any,
            inputs: dict[str, Any],
            return_outputs: bool = False,
            num_items_in_batch: Any = None,
        ) -> Any:
            assert num_items_in_batch is not None, "get_batch_samples counts every training step"
            logits = diffusion_forward(
                model, inputs, self.diffusion.objective, self.accelerator.unwrap_model(model)
            )
            loss = weighted_token_nll_sum(logits, inputs["labels"], inputs["weights"]) / num_items_in_batch
            if self.args.average_tokens_across_devices and self.args.world_size > 1:
                loss = loss * self.accelerator.num_processes  # DDP averages gradients over processes
            return (loss, logits) if return_outputs else loss

    return DiffusionTrainer


def build_diffusion_trainer(
    model: Any,
    tokenizer: Any,
    dataset: Any,
    recipe: TrainRecipe,
    settings: DiffusionSettings,
    output_dir: Path,
    *,
    callbacks: Sequence[Any] = (),
    save_steps: int | None = None,
    save_total_limit: int | None = None,
) -> Any:
    """`t3s.training.build_trainer`'s counterpart for a dLLM student (converted by `t3s.dllm.a2d`)."""
    mask_id = mask_token_id(tokenizer)
    args = training_arguments(recipe, output_dir, save_steps=save_steps, save_total_limit=save_total_limit)
    args.remove_unused_columns = False  # the collator reads the response span and target mask
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return _diffusion_trainer_class()(
        model=make_bidirectional(model),
        args=args,
        train_dataset=dataset,
        data_collator=DiffusionCollator(settings, pad, tokenizer.eos_token_id),
        processing_class=tokenizer,
        callbacks=[*callbacks, _stop_on_nonfinite_loss(output_dir)],
        diffusion=settings,
        mask_token_id=mask_id,
    )
