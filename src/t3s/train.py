"""The train stage: from θ0, on a masked dataset, with the probe's recipe; only the mask differs."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from t3s.errors import T3SError
from t3s.fingerprint import digest, file_digest, model_fingerprint
from t3s.io import write_jsonl
from t3s.rundir import RunDir
from t3s.selection import MASKS_FILE, read_masks_stats
from t3s.stage import Attempt, Stage, execute
from t3s.tokens import TokenizedExample
from t3s.training import (
    NonFiniteLoss,
    TrainRecipe,
    build_trainer,
    list_checkpoints,
    log_history_rows,
    prepare_model,
    remove_incomplete_checkpoints,
    sft_dataset,
)


class TrainStage(Stage):
    """θ0 trained on RUN/masks/<policy> into RUN/train/<policy>/model; resumable from its last checkpoint."""

    def __init__(
        self,
        policy: str,
        *,
        base: str | None = None,
        recipe: TrainRecipe | None = None,
        save_every: int = 10,
        trust_remote_code: bool = False,
    ) -> None:
        self.policy, self.name = policy, f"train:{policy}"
        self.base, self.recipe = base, recipe  # default: the run's θ0 and the probe's recipe
        self.save_every, self.trust_remote_code = save_every, trust_remote_code
        self.items: list[TokenizedExample] = []
        self.labels: list[list[int]] = []
        self.loss = "nll"  # the objective the masks were selected for (`SelectOptions.loss`)

    def fingerprint(self, run: RunDir) -> str:
        self.recipe = self.recipe or run.recipe()
        self.base = self.base or run.base_model()
        masks = run.masks(self.policy)
        rows = masks.to_pylist()
        self.items = [
            TokenizedExample(r["id"], r["input_ids"], r["response_start"], r["response_end"]) for r in rows
        ]
        self.labels = [r["labels"] for r in rows]
        masks_file = run.masks_dir(self.policy) / MASKS_FILE
        options = (read_masks_stats(run.masks_dir(self.policy)) or {}).get("options") or {}
        self.loss = options.get("loss", "nll")
        if self.loss not in ("nll", "dft"):
            raise T3SError(f"{run.masks_dir(self.policy)}/stats.json: unknown loss {self.loss!r} (nll, dft)")
        return digest(
            file_digest(masks_file),
            model_fingerprint(self.base),
            self.recipe.model_dump(exclude={"report_to"}),
            *([self.loss] if self.loss != "nll" else []),  # NLL runs keep their earlier fingerprints
        )

    def outputs_exist(self, run: RunDir) -> bool:
        return (run.model_dir(self.policy) / "config.json").exists()

    def prepare(self, run: RunDir, attempt: Attempt) -> dict[str, Any]:
        if attempt.main:
            if attempt.stale:  # another mask or recipe: its checkpoints are not ours
                shutil.rmtree(run.train_dir(self.policy), ignore_errors=True)
            remove_incomplete_checkpoints(run.train_checkpoints(self.policy))
        return {}

    def run(self, run: RunDir, attempt: Attempt) -> dict[str, Any]:
        import torch

        from t3s import distributed
        from t3s.models import load_model, load_tokenizer

        assert self.recipe is not None and self.base is not None  # set by fingerprint
        recipe, base, remote = self.recipe, self.base, self.trust_remote_code
        state = distributed.state()
        out, ckpt_dir, log = (
            run.train_dir(self.policy),
            run.train_checkpoints(self.policy),
            run.train_log(self.policy),
        )
        tokenizer = load_tokenizer(base, trust_remote_code=remote)
        dtype = torch.bfloat16 if recipe.param_dtype == "bfloat16" else torch.float32
        model = prepare_model(
            load_model(base, device=state.device, dtype=dtype, trust_remote_code=remote), recipe
        )
        trainer = build_trainer(
            model,
            tokenizer,
            sft_dataset(self.items, self.labels),
            recipe,
            ckpt_dir,
            save_steps=self.save_every,
            loss=self.loss,
        )
        latest = list_checkpoints(ckpt_dir, resumable=True)
        trainer.args.save_total_limit = 1
        try:
            trainer.train(resume_from_checkpoint=str(latest[-1]) if latest else None)
        except NonFiniteLoss as exc:
            # Keep the log up to and including the bad step; no model is written and the stage is not done.
            if attempt.main:
                write_jsonl(log, log_history_rows(trainer))
            raise T3SError(
                f"train {self.policy}: non-finite loss ({exc.loss}) at step {exc.step}; see {log}"
            ) from exc
        tmp = out / ".model.tmp"
        if recipe.lora is not None:
            trainer.model = trainer.model.merge_and_unload()  # a plain checkpoint, for eval and RRT alike
        trainer.save_model(str(tmp))
        rows = log_history_rows(trainer)
        summary = {"base": base, "masks": str(run.masks_dir(self.policy).relative_to(run.root)),
                   "steps": recipe.steps, "final_loss": rows[-1]["loss"] if rows else None, "loss": self.loss}  # fmt: skip
        if attempt.main:
            tokenizer.save_pretrained(str(tmp))
            shutil.rmtree(run.model_dir(self.policy), ignore_errors=True)
            os.replace(tmp, run.model_dir(self.policy))
            write_jsonl(log, rows)
            shutil.rmtree(ckpt_dir, ignore_errors=True)
        return {"summary": summary}


def train_policy(
    run_path: str | Path,
    name: str,
    *,
    base: str | None = None,
    recipe: TrainRecipe | None = None,
    save_every: int = 10,
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    """Train θ0 on RUN/masks/<name> into RUN/train/<name>/model; resumable from its last checkpoint."""
    stage = TrainStage(
        name, base=base, recipe=recipe, save_every=save_every, trust_remote_code=trust_remote_code
    )
    return execute(RunDir(run_path), stage)["summary"]
