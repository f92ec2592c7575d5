"""`T3SCallback`: the trajectory probe inside a user's own HF Trainer or TRL SFTTrainer run.

Added to a trainer, it keeps a t3s run directory the way `t3s probe` does, with the same pieces
(`ProbeStage`'s fingerprint, manifest records and pruning, `AccuracyProbe`'s measurement): it binds
the corpus to the run (the tokenize stage), measures θ0 when training begins, and at each of the
probe's steps saves the weights to RUN/probe/checkpoints/checkpoint-N with the trainer's
`save_model` (so FSDP and DeepSpeed gather them), measures training accuracy there, appends the row
to probe/metrics.jsonl, logs it as `t3s/<metric>` through `trainer.log` (so every `report_to`
backend gets it) and prunes (online: θ0, latest, running minimum, kept steps). When training ends
it writes θb's record (probe/bottleneck.json and the manifest), so `t3s profile --run`,
`t3s select` and `t3s train` continue from the run directory.

Unlike `t3s probe`: the checkpoints hold weights only (the trainer's own output_dir keeps what it
resumes from); the recipe recorded for `t3s train` is read from the trainer's arguments and the
model (LoRA from its PEFT config; frozen layers are not recorded); and the callback makes the
trainer log its loss at each measured step, whatever its logging settings, so a row's `train_loss`
is the trainer's logged loss: the mean since its previous log (the step's own loss with
`logging_steps=1`). A probe step whose log something else suppresses is an error (T3SError).

Under accelerate every process runs the callback: all save through `save_model`, each measures a
share of the prompts and the verdicts are gathered (as in `t3s probe`); the main process writes
the run directory and logs.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from t3s.data import Example, write_corpus
from t3s.errors import T3SError
from t3s.probe import Probe, ProbeSettings, ProbeStage
from t3s.rundir import RunDir
from t3s.stage import Started, finish, start
from t3s.tokens import TokenizeConfig, tokens_fingerprint
from t3s.training import LoraSettings, TrainRecipe

# The row's values logged through the trainer, as `t3s/<name>`.
LOGGED = (
    "train_accuracy",
    "teacher_forced_loss",
    "verifier_errors",
    "truncated",
    "mean_tokens",
    "heldout_accuracy",
)


def recipe_from_trainer(trainer: Any, steps: int) -> TrainRecipe:
    """The t3s recipe of a trainer's run: what `t3s train` retrains with and the probe's fingerprint."""
    import torch

    args, model = trainer.args, trainer.model
    return TrainRecipe(
        steps=steps,
        batch_size=args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size,
        micro_batch_size=args.per_device_train_batch_size,
        lr=args.learning_rate,
        scheduler=getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type),
        warmup_steps=args.get_warmup_steps(steps),
        weight_decay=args.weight_decay,
        adam_beta1=args.adam_beta1,
        adam_beta2=args.adam_beta2,
        max_grad_norm=args.max_grad_norm,
        seed=args.seed,
        lora=_lora_settings(model),
        gradient_checkpointing=bool(args.gradient_checkpointing),
        param_dtype="bfloat16" if model.dtype == torch.bfloat16 else "float32",
        mixed_precision="bf16" if args.bf16 else "no",
        report_to=list(args.report_to),
        optim=getattr(args.optim, "value", args.optim),
    )


def _lora_settings(model: Any) -> LoraSettings | None:
    configs = getattr(model, "peft_config", None)
    if not configs:
        return None
    cfg = next(iter(configs.values()))
    if type(cfg).__name__ != "LoraConfig":
        raise T3SError(
            f"T3SCallback: the model's PEFT method {type(cfg).__name__} is not LoRA, which t3s trains"
        )
    targets = cfg.target_modules
    layers = cfg.layers_to_transform
    return LoraSettings(
        r=cfg.r,
        alpha=cfg.lora_alpha,
        dropout=cfg.lora_dropout,
        target_modules=sorted(targets) if isinstance(targets, set) else targets,
        layers=[layers] if isinstance(layers, int) else layers,
    )


class T3SCallback(TrainerCallback):  # type: ignore[misc]
    """The trajectory probe of a user's SFT run, written to `run_dir` (see the module docstring).

    `data`: the training corpus (a path the CLI reads, or Examples), whose prompts and answers are
    measured, tokenized with `tokenize` as `t3s probe` does; `base_model`: where θ0's weights are
    (default: the model's `name_or_path`); `restart`: discard a probe of other inputs in `run_dir`.
    """

    def __init__(
        self,
        run_dir: str | Path,
        trainer: Any,
        data: str | Path | Sequence[Example],
        settings: ProbeSettings | None = None,
        *,
        tokenize: TokenizeConfig | None = None,
        tokenizer: Any = None,
        base_model: str | Path | None = None,
        restart: bool = False,
    ) -> None:
        self.run, self.trainer, self.data = RunDir(run_dir), trainer, data
        self.settings = settings or ProbeSettings()
        if self.settings.search != "exhaustive":
            # The adaptive search reloads earlier checkpoints after training: a probe of its own.
            raise T3SError(
                "T3SCallback measures on the exhaustive grid only; use `t3s probe` for search: adaptive"
            )
        self.tokenize = tokenize or TokenizeConfig()
        self.tokenizer = tokenizer if tokenizer is not None else trainer.processing_class
        self.base_model, self.restart = base_model, restart
        self.pending: int | None = None  # a probe step whose loss the trainer is about to log

    def _corpus(self) -> tuple[list[Example], list[Any]]:
        from t3s.tokenize_stage import prepare_corpus

        if isinstance(self.data, str | Path):
            return prepare_corpus(self.run, self.data, self.tokenizer, self.tokenize)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "corpus.parquet"
            write_corpus(path, self.data)
            return prepare_corpus(self.run, path, self.tokenizer, self.tokenize)

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        from t3s import distributed

        base = self.base_model or getattr(model, "name_or_path", "")
        if not base:
            raise T3SError("T3SCallback: the model has no name_or_path; pass base_model= (θ0's directory)")
        examples, items = self._corpus()
        self.stage = ProbeStage(
            str(base), examples, items, self.tokenizer, self.tokenize,
            recipe_from_trainer(self.trainer, state.max_steps), self.settings,
            tokens_fp=tokens_fingerprint(items), restart=self.restart,
        )  # fmt: skip
        self.started: Started = start(
            self.run,
            self.stage,
            self.stage.fingerprint(self.run),
            self.run.stage("probe"),
            distributed.state(),
        )
        self.probe: Probe = self.stage.probe(self.run, self.started.attempt.fingerprint)
        if state.global_step == 0:
            self._log(self.probe.record(model, 0, None, Path(self.stage.model_path)))
        elif self.probe.needs_eval(0) and 0 not in self.probe.evaluated():
            raise T3SError(
                f"{self.run.metrics}: training resumes at step {state.global_step} but θ0 was never measured; "
                "restart the training from θ0"
            )

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        self._check_measured()
        if state.global_step in self.probe.save_steps:
            # Measure after the trainer logs this step's loss (on_log), which the row records.
            control.should_log = True
            self.pending = state.global_step
        return control

    def on_log(
        self, args: Any, state: Any, control: Any, logs: Any = None, model: Any = None, **kwargs: Any
    ) -> None:
        if self.pending != state.global_step or "loss" not in (logs or {}):
            return
        from t3s import distributed

        step, self.pending = state.global_step, None
        ckpt = self.run.checkpoints_dir / f"checkpoint-{step}"
        if step not in self.probe.evaluated():  # a resumed run measured it already
            # All processes: FSDP and DeepSpeed gather the weights; `_internal_call` keeps it off the Hub.
            self.trainer.save_model(str(ckpt), _internal_call=True)
            if distributed.state().is_main_process:
                state.save_to_json(
                    str(ckpt / "trainer_state.json")
                )  # written last: the checkpoint is complete
            distributed.state().wait_for_everyone()
        self._log(self.probe.record(model, step, float(logs["loss"]), ckpt))
        self.probe.prune()

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        from t3s import distributed

        self._check_measured()
        extras = self.stage.conclude(self.run, self.probe, self.started.attempt.main)
        finish(self.run, self.stage, self.started, extras, distributed.state())

    def _check_measured(self) -> None:
        # The trainer logs the loss right after on_step_end; a probe step still pending at the next
        # step (or at the end) was never logged, so never measured: the probe would miss it silently.
        if self.pending is not None:
            raise T3SError(
                f"T3SCallback: the trainer logged no loss at probe step {self.pending}, so it was not "
                "measured; a callback after T3SCallback or a trainer override suppressed the log it "
                "requests there (control.should_log): let the trainer log at the probe's steps"
            )

    def _log(self, row: dict[str, Any] | None) -> None:
        if row is not None:  # the main process's row
            self.trainer.log({f"t3s/{k}": row[k] for k in LOGGED if row.get(k) is not None})
