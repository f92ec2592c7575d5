"""The train stage: from θ0, on a masked dataset, with the probe's recipe; only the mask differs.

With a dLLM student (`t3s.dllm.student`) the same stage trains the student's θ0 with the
masked-diffusion objective on every response token, the masks' `target_mask` (B) masked on top
(none: dLLM SFT); checkpoints, resume and the model's atomic write are the AR ones.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from t3s.errors import T3SError
from t3s.fingerprint import digest, file_digest, model_fingerprint
from t3s.io import write_jsonl
from t3s.masks import response_mask
from t3s.rundir import RunDir
from t3s.selection import MASKS_FILE, TARGET_MASK, read_masks_stats
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

if TYPE_CHECKING:
    import pyarrow as pa

    from t3s.dllm.student import DllmStudent


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
        student: DllmStudent | None = None,
    ) -> None:
        self.policy, self.name = policy, f"train:{policy}"
        # Defaults: the run's θ0 (a dLLM student's own θ0) and the probe's recipe.
        self.base, self.recipe, self.student = base, recipe, student
        self.save_every, self.trust_remote_code = save_every, trust_remote_code
        self.items: list[TokenizedExample] = []
        self.labels: list[list[int]] = []
        self.loss = "nll"  # the objective the masks were selected for (`SelectOptions.loss`)
        self.targets: list[np.ndarray] | None = None  # a dLLM policy's B, per example

    def _check_masks(self, run: RunDir, masks: pa.Table) -> None:
        """A dLLM learns every response token (its policies choose B); an AR student reads no B."""
        where = run.masks_dir(self.policy)
        if self.student is None:
            if TARGET_MASK in masks.column_names:
                raise T3SError(f"{where}: a dLLM target set (target_mask); train it with a dLLM student")
            return
        for r in masks.to_pylist():
            whole = response_mask(len(r["input_ids"]), r["response_start"], r["response_end"])
            if not np.array_equal(np.asarray(r["loss_mask"], dtype=bool), whole):
                raise T3SError(
                    f"{where}: example {r['id']!r} keeps part of its response (an AR policy's mask); "
                    "a dLLM student trains on sft, dllm-t3s or dllm-random masks"
                )
        if TARGET_MASK in masks.column_names:
            self.targets = [np.asarray(t, dtype=np.int8) for t in masks.column(TARGET_MASK).to_pylist()]

    def fingerprint(self, run: RunDir) -> str:
        self.recipe = self.recipe or run.recipe()
        self.base = self.base or (self.student.model if self.student else run.base_model())
        masks = run.masks(self.policy)
        self._check_masks(run, masks)
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
        if self.student is not None and self.loss != "nll":
            raise T3SError(
                f"{run.masks_dir(self.policy)}: loss {self.loss} is for AR students; a dLLM trains with its own"
            )
        return digest(
            file_digest(masks_file),
            model_fingerprint(self.base),
            self.recipe.model_dump(exclude={"report_to"}),
            *([self.loss] if self.loss != "nll" else []),  # NLL runs keep their earlier fingerprints
            *([("dllm", self.student.diffusion.model_dump())] if self.student else []),
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
        trainer = self._trainer(run, model, tokenizer, recipe, ckpt_dir)
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
        if self.student is not None:
            summary.update(loss="diffusion", student="dllm", objective=self.student.diffusion.objective)
        if attempt.main:
            tokenizer.save_pretrained(str(tmp))
            shutil.rmtree(run.model_dir(self.policy), ignore_errors=True)
            os.replace(tmp, run.model_dir(self.policy))
            write_jsonl(log, rows)
            shutil.rmtree(ckpt_dir, ignore_errors=True)
        return {"summary": summary}

    def _trainer(self, run: RunDir, model: Any, tokenizer: Any, recipe: TrainRecipe, ckpt_dir: Path) -> Any:
        if self.student is None:
            dataset = sft_dataset(self.items, self.labels)
            return build_trainer(
                model, tokenizer, dataset, recipe, ckpt_dir, save_steps=self.save_every, loss=self.loss
            )
        from t3s.dllm.student import check_student_tokenizer
        from t3s.dllm.training import build_diffusion_trainer, diffusion_dataset

        # Δc was measured on the selector's token ids: they must name the same tokens for the student.
        check_student_tokenizer(run.base_model(), self.student, trust_remote_code=self.trust_remote_code)
        dataset = diffusion_dataset(self.items, self.targets)
        return build_diffusion_trainer(
            model, tokenizer, dataset, recipe, self.student.diffusion, ckpt_dir, save_steps=self.save_every
        )


def train_policy(
    run_path: str | Path,
    name: str,
    *,
    base: str | None = None,
    recipe: TrainRecipe | None = None,
    save_every: int = 10,
    trust_remote_code: bool = False,
    student: DllmStudent | None = None,
) -> dict[str, Any]:
    """Train θ0 (or a dLLM `student`) on RUN/masks/<name> into RUN/train/<name>/model; resumable."""
    stage = TrainStage(
        name, base=base, recipe=recipe, save_every=save_every, trust_remote_code=trust_remote_code,
        student=student,
    )  # fmt: skip
    return execute(RunDir(run_path), stage)["summary"]
