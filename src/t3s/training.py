"""Supervised fine-tuning on pre-tokenized `input_ids` + `labels` with HF Trainer.

The same code trains the probe (plain SFT) and every masked policy: a mask is only `labels`
set to -100. Trainer counts the supervised tokens of all micro-batches of an optimizer step on
all processes (`num_items_in_batch`, `average_tokens_across_devices`) and the loss sums token
losses and divides by that count, so the loss is the mean over kept tokens of the whole global
batch and masking never rescales the step size. A model whose `forward` takes Trainer's loss
kwargs computes that loss itself; for any other model `build_trainer` computes it from the logits
(`causal_lm_loss`), since Trainer would otherwise average per-micro-batch means. A non-finite loss
stops training at the step it appears (`NonFiniteLoss`). Runs under `accelerate launch` (DDP,
FSDP, DeepSpeed) and, on CPUs, torchrun (DDP over gloo) unchanged (`t3s.distributed`).

`loss="dft"` (Dynamic Fine-Tuning, -sg(p)·log p per kept token) trains with TRL's SFTTrainer and
`SFTConfig(loss_type="dft")` under the same arguments: TRL sums token losses over the same global
kept-token count, and on t3s's data it trains exactly as t3s does (tests/test_export.py), so only
the per-token loss differs. TRL refuses DFT under DeepSpeed.
"""

from __future__ import annotations

import logging
import math
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from t3s.errors import T3SError
from t3s.masks import IGNORE, labels_for
from t3s.tokens import TokenizedExample

_log = logging.getLogger(__name__)


class LoraSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    r: int = Field(16, ge=1, description="LoRA rank")
    alpha: int | None = Field(None, ge=1, description="LoRA scaling α (default: 2·r)")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the LoRA inputs")
    target_modules: list[str] | str = Field(
        "all-linear", description="the modules adapted: all-linear, or module names (repeatable)"
    )
    layers: list[int] | None = Field(None, description="adapt only these decoder layers (all by default)")

    @field_validator("target_modules")
    @classmethod
    def _shorthand(cls, value: list[str] | str) -> list[str] | str:
        # PEFT reads all-linear only as a string; `--lora-target-modules all-linear` gives a list.
        return "all-linear" if value == ["all-linear"] else value

    @model_validator(mode="after")
    def _alpha(self) -> LoraSettings:
        # Set here, not left None, so that the recipe's dump (fingerprint, manifest) holds the value used.
        if self.alpha is None:
            self.alpha = 2 * self.r
        return self


class TrainRecipe(BaseModel):
    """One SFT recipe, shared by the probe and every retraining so that only the mask differs."""

    model_config = ConfigDict(extra="forbid")
    steps: int = Field(50, ge=1, description="optimizer steps")
    batch_size: int = Field(64, ge=1, description="global batch size")
    micro_batch_size: int = Field(8, ge=1, description="per-device batch size")
    lr: float = Field(1e-5, gt=0, description="learning rate")
    scheduler: str = Field("constant_with_warmup", description="transformers lr scheduler name")
    warmup_steps: int = Field(0, ge=0, description="learning-rate warmup steps")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    adam_beta1: float = Field(0.9, ge=0, lt=1, description="AdamW β1")
    adam_beta2: float = Field(0.95, ge=0, lt=1, description="AdamW β2")
    max_grad_norm: float = Field(1.0, gt=0, description="gradient clipping: the largest global norm")
    seed: int = Field(42, description="training seed (data order, adapter initialisation)")
    lora: LoraSettings | None = Field(None, description="train LoRA adapters (peft) instead of all weights")
    freeze_embeddings: bool = Field(False, description="freeze the input embeddings")
    freeze_layers: int = Field(0, ge=0, description="freeze the lowest N decoder layers")
    gradient_checkpointing: bool = Field(False, description="recompute activations in the backward pass")
    param_dtype: Literal["float32", "bfloat16"] = Field("float32", description="dtype of the trained weights")
    mixed_precision: Literal["auto", "no", "bf16"] = Field(
        "auto", description="bf16 autocast: auto (on CUDA), no or bf16"
    )
    report_to: list[str] = Field(
        default_factory=list, description="HF Trainer report_to (wandb, tensorboard, ...)"
    )
    optim: str = Field("adamw_torch", description="HF Trainer optimizer name")

    @model_validator(mode="after")
    def _check(self) -> TrainRecipe:
        if self.batch_size % self.micro_batch_size:
            raise ValueError(
                f"batch_size {self.batch_size} is not a multiple of micro_batch_size {self.micro_batch_size}"
            )
        return self


def _freeze(model: Any, recipe: TrainRecipe) -> None:
    if recipe.freeze_embeddings:
        for p in model.get_input_embeddings().parameters():
            p.requires_grad_(False)
    if recipe.freeze_layers:
        layers = getattr(model.get_decoder(), "layers", None)
        if layers is None:
            raise T3SError(f"freeze_layers: cannot find the decoder layers of {type(model).__name__}")
        if recipe.freeze_layers > len(layers):
            raise T3SError(f"freeze_layers {recipe.freeze_layers} exceeds the model's {len(layers)} layers")
        for layer in layers[: recipe.freeze_layers]:
            for p in layer.parameters():
                p.requires_grad_(False)


def prepare_model(model: Any, recipe: TrainRecipe, trainable_tokens: Sequence[int] = ()) -> Any:
    """Apply freezing or LoRA as the recipe says.

    `trainable_tokens`: embedding rows the LoRA adapter also trains and saves (peft's trainable
    tokens), e.g. a dLLM's new mask token, whose row no LoRA delta of a linear layer can reach.
    """
    _freeze(model, recipe)
    if trainable_tokens and recipe.lora is None:
        raise T3SError("trainable_tokens needs a LoRA recipe (without LoRA every row trains)")
    if recipe.lora is not None:
        from peft import LoraConfig, get_peft_model

        cfg = LoraConfig(
            r=recipe.lora.r,
            lora_alpha=recipe.lora.alpha,
            lora_dropout=recipe.lora.dropout,
            target_modules=recipe.lora.target_modules,
            layers_to_transform=recipe.lora.layers,
            task_type="CAUSAL_LM",
            trainable_token_indices=list(trainable_tokens) or None,
        )
        model = get_peft_model(model, cfg)
    return model


def world_size() -> int:
    from t3s import distributed

    return int(distributed.state().num_processes)


def training_arguments(
    recipe: TrainRecipe,
    output_dir: Path,
    *,
    save_steps: int | None = None,
    save_total_limit: int | None = None,
    args_class: Any = None,
    **extra: Any,
) -> Any:
    """The recipe as `args_class` (TrainingArguments by default, or a subclass such as TRL's
    SFTConfig, given its own `extra` settings)."""
    from transformers import TrainingArguments

    from t3s import distributed

    args_class = args_class or TrainingArguments
    world = world_size()
    per_step = recipe.micro_batch_size * world
    if recipe.batch_size % per_step:
        raise T3SError(
            f"batch_size {recipe.batch_size} is not a multiple of micro_batch_size x processes = {per_step}"
        )
    cpu = distributed.on_cpu()
    bf16 = recipe.mixed_precision == "bf16" or (recipe.mixed_precision == "auto" and not cpu)
    return args_class(
        output_dir=str(output_dir),
        max_steps=recipe.steps,
        per_device_train_batch_size=recipe.micro_batch_size,
        gradient_accumulation_steps=recipe.batch_size // per_step,
        learning_rate=recipe.lr,
        lr_scheduler_type=recipe.scheduler,
        warmup_steps=recipe.warmup_steps,
        weight_decay=recipe.weight_decay,
        adam_beta1=recipe.adam_beta1,
        adam_beta2=recipe.adam_beta2,
        max_grad_norm=recipe.max_grad_norm,
        optim=recipe.optim,
        seed=recipe.seed,
        bf16=bf16 and recipe.param_dtype == "float32",
        # Trainer re-creates accelerate's state from this: it must join the group t3s joined.
        use_cpu=cpu,
        **_checkpointing_arg(args_class, recipe.gradient_checkpointing),
        logging_steps=1,
        report_to=recipe.report_to or "none",
        save_strategy="steps",
        save_steps=save_steps or recipe.steps,
        save_total_limit=save_total_limit,
        average_tokens_across_devices=True,
        # Trainer's default logs the mean of earlier losses in place of a NaN/inf one, hiding divergence.
        logging_nan_inf_filter=False,
        remove_unused_columns=True,
        dataloader_drop_last=False,
        **extra,
    )


def _checkpointing_arg(cls: Any, enabled: bool) -> dict[str, bool]:
    """transformers renamed gradient_checkpointing to activation_checkpointing; pass whichever exists,
    always: TRL's SFTConfig turns it on by default."""
    fields = getattr(cls, "__dataclass_fields__", {})
    return {
        "activation_checkpointing"
        if "activation_checkpointing" in fields
        else "gradient_checkpointing": enabled
    }


def sft_dataset(items: Sequence[TokenizedExample], labels: Sequence[list[int]] | None = None) -> Any:
    import datasets

    labels = labels if labels is not None else [labels_for(t) for t in items]
    if not any(any(v != IGNORE for v in row) for row in labels):
        raise T3SError("no token is left to train on: every label is -100")
    return datasets.Dataset.from_dict({"input_ids": [t.input_ids for t in items], "labels": list(labels)})


def causal_lm_loss(outputs: Any, labels: Any, num_items_in_batch: Any = None) -> Any:
    """Summed next-token cross-entropy of the kept labels / `num_items_in_batch` (Trainer's compute_loss_func).

    The same transformers function a causal LM calls on its own labels, so this path and the model's
    are the same loss. Trainer counts kept labels over `labels[..., 1:]` or all of `labels`,
    depending on the model; both agree here: prompts are never empty, so label 0 is always -100.
    """
    from transformers.loss.loss_utils import ForCausalLMLoss

    logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
    return ForCausalLMLoss(
        logits, labels, logits.shape[-1], num_items_in_batch=num_items_in_batch, ignore_index=IGNORE
    )


class NonFiniteLoss(T3SError):
    """Training logged a NaN or infinite loss; its row is the last of the trainer's log history."""

    def __init__(self, where: Path, step: int, loss: float) -> None:
        super().__init__(f"{where}: non-finite loss ({loss}) at step {step}; training stopped")
        self.step = step
        self.loss = loss


def _stop_on_nonfinite_loss(where: Path) -> Any:
    from transformers import TrainerCallback

    class StopOnNonFiniteLoss(TrainerCallback):
        # Every process logs the same all-reduced loss, so all of them stop at the same step.
        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> Any:
            loss = (logs or {}).get("loss")
            if loss is not None and not math.isfinite(loss):
                raise NonFiniteLoss(where, state.global_step, loss)
            return control

    return StopOnNonFiniteLoss()


def _trainer_class() -> Any:
    import torch
    from transformers import Trainer

    class MaskedTrainer(Trainer):  # type: ignore[misc]
        def get_batch_samples(self, *args: Any, **kwargs: Any) -> Any:
            # A global batch whose every token is masked (heavy selection on a small corpus) has
            # nothing to learn: its loss is the empty sum, 0, with zero gradients, not 0/0 = NaN.
            samples, count = super().get_batch_samples(*args, **kwargs)
            if torch.is_tensor(count):
                count = count.clamp(min=1)
            elif count is not None:
                count = max(count, 1)
            return samples, count

    return MaskedTrainer


def build_trainer(
    model: Any,
    tokenizer: Any,
    dataset: Any,
    recipe: TrainRecipe,
    output_dir: Path,
    *,
    callbacks: Sequence[Any] = (),
    save_steps: int | None = None,
    save_total_limit: int | None = None,
    loss: Literal["nll", "dft"] = "nll",
) -> Any:
    from transformers import DataCollatorForSeq2Seq

    tokenizer.padding_side = "right"
    saving = {"save_steps": save_steps, "save_total_limit": save_total_limit}
    callbacks = [*callbacks, _stop_on_nonfinite_loss(output_dir)]
    if loss == "dft":
        from trl import SFTConfig, SFTTrainer

        # max_length None: the data is already tokenized and truncated; TRL must not cut it again.
        args = training_arguments(
            recipe, output_dir, **saving, args_class=SFTConfig, loss_type="dft", max_length=None
        )
        return SFTTrainer(
            model=model, args=args, train_dataset=dataset, processing_class=tokenizer, callbacks=callbacks
        )
    args = training_arguments(recipe, output_dir, **saving)
    collator = DataCollatorForSeq2Seq(
        tokenizer, padding=True, label_pad_token_id=IGNORE, pad_to_multiple_of=8
    )
    trainer = _trainer_class()(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=collator,
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    # Trainer passes `num_items_in_batch` only to a forward that takes **kwargs (seen through PEFT);
    # otherwise it would average per-micro-batch means. Its compute_loss_func gets the same global
    # count and the same rescaling for gradient accumulation and processes as the model path.
    if trainer.model_accepts_loss_kwargs:
        _log.info("loss: %s normalises by the global kept-token count itself", type(model).__name__)
    else:
        trainer.compute_loss_func = causal_lm_loss
        _log.info(
            "loss: %s.forward takes no loss kwargs; t3s normalises by the global kept-token count",
            type(model).__name__,
        )
    return trainer


def checkpoint_step(path: Path) -> int:
    return int(path.name.rsplit("-", 1)[1])


def list_checkpoints(output_dir: Path, *, resumable: bool = False) -> list[Path]:
    """Complete `checkpoint-N` directories in step order (Trainer writes trainer_state.json last)."""
    if not output_dir.exists():
        return []
    found = []
    for p in output_dir.glob("checkpoint-*"):
        if not p.name.rsplit("-", 1)[1].isdigit() or not (p / "trainer_state.json").exists():
            continue
        if resumable and not (p / "optimizer.pt").exists():
            continue
        found.append(p)
    return sorted(found, key=checkpoint_step)


def remove_incomplete_checkpoints(output_dir: Path) -> None:
    """A kill during a save leaves a checkpoint without trainer_state.json: it must not be resumed."""
    for p in output_dir.glob("checkpoint-*"):
        if p.is_dir() and not (p / "trainer_state.json").exists():
            shutil.rmtree(p, ignore_errors=True)


def strip_training_state(checkpoint: Path) -> None:
    """Keep only the weights (and tokenizer, config) of a checkpoint that will never be resumed."""
    for name in ("optimizer.pt", "scheduler.pt", "scaler.pt"):
        (checkpoint / name).unlink(missing_ok=True)
    for p in checkpoint.glob("rng_state*.pth"):
        p.unlink(missing_ok=True)
    for p in checkpoint.glob("global_step*"):  # DeepSpeed's optimizer shards
        shutil.rmtree(p, ignore_errors=True)


def log_history_rows(trainer: Any) -> list[dict[str, Any]]:
    """Per-step training log (loss, grad norm, lr) from Trainer's history, without the summary row.

    JSON has no NaN or Infinity: a non-finite value is written as null and listed, with its value
    as a string, under `nonfinite` (e.g. `"loss": null, "nonfinite": {"loss": "nan"}`).
    """
    return [_json_finite(row) for row in trainer.state.log_history if "loss" in row]


def _json_finite(row: dict[str, Any]) -> dict[str, Any]:
    bad = {k: str(v) for k, v in row.items() if isinstance(v, float) and not math.isfinite(v)}
    return {**row, **dict.fromkeys(bad), "nonfinite": bad} if bad else row
